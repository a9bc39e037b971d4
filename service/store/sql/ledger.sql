-- The money rules of the credits ledger: the one current source of its server-side
-- functions. A change here ships as a migration of only the functions that changed,
-- written by `python -m scripts.sqlmigration NAME`; tests/sql/test_functions_match_source.py
-- fails when a migrated database and this file disagree. docs/architecture.md
-- "Changing a rule" shows the steps.
--
-- Each RPC that reads or changes an account is one call, one transaction, under one lock
-- (the account's row, always taken first, so writers of one account serialize and cannot
-- deadlock). A transfer alone takes two, both first, the lower account id first. Every
-- function takes the time as `p_now`, from the service's one clock, so that expiry is
-- decided by expires_at and tests can move time instead of sleeping.
-- Errors the caller must see are raised with SQLSTATEs of class 'CR', listed once in
-- service/ledger/failures.py; anything else is a bug and becomes INTERNAL.

-- Named constants shared with Python (service/ledger/model.py, service/ledger/limits.py);
-- tests/sql/test_constants.py checks that both sides agree. IMMUTABLE SQL functions are
-- inlined by the planner, so using them costs nothing.
CREATE OR REPLACE FUNCTION credits_status_reserved() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1::smallint $$;
CREATE OR REPLACE FUNCTION credits_status_confirmed() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 2::smallint $$;
CREATE OR REPLACE FUNCTION credits_status_released() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 3::smallint $$;
CREATE OR REPLACE FUNCTION credits_status_expired() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 4::smallint $$;
CREATE OR REPLACE FUNCTION credits_source_purchase() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1::smallint $$;
CREATE OR REPLACE FUNCTION credits_source_signup_bonus() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 2::smallint $$;
CREATE OR REPLACE FUNCTION credits_source_promotion() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 3::smallint $$;
CREATE OR REPLACE FUNCTION credits_source_adjustment() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 4::smallint $$;
CREATE OR REPLACE FUNCTION credits_source_transfer() RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 5::smallint $$;
-- What one account may hold (remaining plus held): every per-account sum then stays
-- below int64's 9.2e18, in SQL, in Python and on the wire.
CREATE OR REPLACE FUNCTION credits_account_credits_max() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1000000000000000000::bigint $$;

-- The service-wide default thresholds of balance alerts: CREDITS_BALANCE_ALERT_THRESHOLDS,
-- which each service connection carries as the setting credits.balance_alert_thresholds
-- (service/store/postgres.py), so that no function needs another parameter. Unset (a
-- session of another program): none.
CREATE OR REPLACE FUNCTION credits_default_alert_thresholds() RETURNS bigint[]
LANGUAGE sql STABLE AS $$
  SELECT coalesce(string_to_array(nullif(current_setting('credits.balance_alert_thresholds',
                                                         true), ''), ',')::bigint[],
                  '{}'::bigint[])
$$;

-- Writes one event row at its place in the stream (see credits_emit).
CREATE OR REPLACE FUNCTION credits_insert_event(p_type text, p_account text,
                                                p_now timestamptz, p_caller text,
                                                p_grant uuid, p_reservation uuid,
                                                p_revocation uuid, p_amount bigint,
                                                p_returned bigint, p_unrecovered bigint,
                                                p_threshold bigint, p_available bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_position bigint;
BEGIN
  SELECT greatest(pg_current_xact_id()::text::bigint, max(e.stream_position)) INTO v_position
    FROM ledger_events e WHERE e.account_id = p_account;
  INSERT INTO ledger_events (stream_position, event_type, account_id, occurred_at, caller,
                             grant_id, reservation_id, revocation_id, amount, returned_amount,
                             unrecovered_amount, threshold, available_after)
  VALUES (v_position, p_type, p_account, p_now, p_caller, p_grant, p_reservation,
          p_revocation, p_amount, p_returned, p_unrecovered, p_threshold, p_available);
END $$;

-- The outbox: writes the event of a ledger change in the transaction of the change, so an
-- event exists exactly when its change committed (docs/architecture.md, "Events"), then
-- the balance alerts the change caused. Called with the account locked. An event's place
-- in the stream is (stream_position, seq): the position is the writing transaction's id,
-- raised to the account's latest position when that is higher (a transaction can get its
-- id before an earlier holder of the account's lock got its own), so an account's events
-- keep the order its lock was held in, which is its commit order; seq orders the events
-- of one position. Readers read only positions below the oldest transaction still
-- running (credits_read_events), and no transaction that can still commit writes below
-- its own id. available_after is the account's available balance right after the change.
--
-- Alerts: the account's thresholds (its own, or the default when it has none of its own)
-- against the available balance, with the state kept on the account: the thresholds it
-- is below (balance_alerts_below) and whether it is depleted. A threshold newly gone
-- below is one balance_low, one left is one balance_recovered, reaching 0 one
-- balance_depleted: one event per crossing, none while the account stays where it is.
-- An account without state yet (new, or older than alerts) gets it without an event.
CREATE OR REPLACE FUNCTION credits_emit(p_type text, p_account text, p_now timestamptz,
                                        p_caller text, p_grant uuid, p_reservation uuid,
                                        p_revocation uuid, p_amount bigint,
                                        p_returned bigint, p_unrecovered bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_available bigint;
  v_thresholds bigint[];
  v_below bigint[];
  v_now_below bigint[];
  v_depleted boolean;
  t bigint;
BEGIN
  -- Each statement of a function costs its executor's start: the change's event is two.
  SELECT (SELECT coalesce(sum(g.remaining_amount), 0) FROM grants g
           WHERE g.account_id = p_account AND g.remaining_amount > 0),
         coalesce(a.balance_alert_thresholds, credits_default_alert_thresholds()),
         a.balance_alerts_below, a.balance_depleted
    INTO v_available, v_thresholds, v_below, v_depleted
    FROM accounts a WHERE a.account_id = p_account;
  INSERT INTO ledger_events (stream_position, event_type, account_id, occurred_at, caller,
                             grant_id, reservation_id, revocation_id, amount, returned_amount,
                             unrecovered_amount, available_after)
  SELECT greatest(pg_current_xact_id()::text::bigint, max(e.stream_position)), p_type,
         p_account, p_now, p_caller, p_grant, p_reservation, p_revocation, p_amount,
         p_returned, p_unrecovered, v_available
    FROM ledger_events e WHERE e.account_id = p_account;
  -- No NOTIFY here: a notifying transaction takes the notification queue's lock at
  -- commit, which cost three quarters of the cycle's throughput (docs/architecture.md,
  -- "Events"); the service notifies after its calls, coalesced (service/store/events.py).

  -- Nothing to decide, the common case: no thresholds, none left below, depletion as it
  -- was. (NULL state, an account's first change, goes on to set it.)
  IF cardinality(v_thresholds) = 0 AND cardinality(v_below) = 0
     AND v_depleted = (v_available = 0) THEN
    RETURN;
  END IF;
  v_now_below := ARRAY(SELECT x FROM unnest(v_thresholds) x WHERE v_available < x
                        ORDER BY x DESC);
  IF v_below = v_now_below AND v_depleted = (v_available = 0) THEN
    RETURN;
  END IF;
  IF v_below IS NOT NULL THEN
    FOR t IN SELECT x FROM unnest(v_now_below) x WHERE x <> ALL (v_below) ORDER BY x DESC
    LOOP
      PERFORM credits_insert_event('balance_low', p_account, p_now, p_caller, NULL, NULL,
                                   NULL, 0, 0, 0, t, v_available);
    END LOOP;
    IF v_available = 0 AND NOT v_depleted THEN
      PERFORM credits_insert_event('balance_depleted', p_account, p_now, p_caller, NULL, NULL,
                                   NULL, 0, 0, 0, NULL, v_available);
    END IF;
    FOR t IN SELECT x FROM unnest(v_below) x
              WHERE x = ANY (v_thresholds) AND x <> ALL (v_now_below) ORDER BY x
    LOOP
      PERFORM credits_insert_event('balance_recovered', p_account, p_now, p_caller, NULL,
                                   NULL, NULL, 0, 0, 0, t, v_available);
    END LOOP;
  END IF;
  -- Written only when it changed: a change that crosses nothing costs no update.
  UPDATE accounts SET balance_alerts_below = v_now_below, balance_depleted = v_available = 0
   WHERE account_id = p_account;
END $$;

-- Gives `p_amount` of a reservation back to the grants it came from, the last-burned
-- allocation first. Credits going back to a grant that owes revocations
-- (unrecovered_amount) pay that debt first, whether or not the grant has expired since:
-- they were owed back either way. What is left goes back to the grant, or expires at once
-- when the grant has expired in the meantime.
CREATE OR REPLACE FUNCTION credits_return(p_reservation uuid, p_amount bigint, p_kind text,
                                          p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  a record;
  v_left bigint := p_amount;
  v_take bigint;
  v_collect bigint;
  v_expire bigint;
BEGIN
  FOR a IN
    SELECT al.grant_id, al.account_id, al.amount - al.returned_amount AS open_amount,
           g.expires_at, g.unrecovered_amount
      FROM allocations al JOIN grants g ON g.grant_id = al.grant_id
     WHERE al.reservation_id = p_reservation AND al.amount > al.returned_amount
     ORDER BY al.burn_rank DESC
  LOOP
    EXIT WHEN v_left = 0;
    v_take := least(a.open_amount, v_left);
    v_collect := least(v_take, a.unrecovered_amount);
    v_expire := CASE WHEN a.expires_at <= p_now THEN v_take - v_collect ELSE 0 END;
    UPDATE allocations SET returned_amount = returned_amount + v_take
     WHERE reservation_id = p_reservation AND grant_id = a.grant_id;
    UPDATE grants
       SET remaining_amount = remaining_amount + v_take - v_collect - v_expire,
           revoked_amount = revoked_amount + v_collect,
           unrecovered_amount = unrecovered_amount - v_collect,
           expired_amount = expired_amount + v_expire
     WHERE grant_id = a.grant_id;
    INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount, created_at)
    VALUES (a.account_id, a.grant_id, p_reservation, p_kind, v_take, p_now);
    IF v_collect > 0 THEN
      INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount, created_at)
      VALUES (a.account_id, a.grant_id, p_reservation, 'revoke', -v_collect, p_now);
    END IF;
    IF v_expire > 0 THEN
      INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount, created_at)
      VALUES (a.account_id, a.grant_id, p_reservation, 'grant_expiry', -v_expire, p_now);
      PERFORM credits_emit('grant_expired', a.account_id, p_now, NULL, a.grant_id,
                           p_reservation, NULL, v_expire, 0, 0);
    END IF;
    v_left := v_left - v_take;
  END LOOP;
  IF v_left <> 0 THEN
    RAISE EXCEPTION 'allocations of reservation % do not cover the return', p_reservation;
  END IF;
END $$;

-- Settles what time has decided for one locked account: reservations past expires_at go
-- back exactly as a Release would, and grants past expires_at expire. Every function
-- below calls it first, reads included, so expiry never waits for the sweeper and what
-- a read reports is what a write would find.
CREATE OR REPLACE FUNCTION credits_settle(p_account text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r record;
BEGIN
  FOR r IN
    SELECT reservation_id, amount FROM reservations
     WHERE account_id = p_account AND status = credits_status_reserved()
       AND expires_at <= p_now
     ORDER BY expires_at, reservation_id
  LOOP
    PERFORM credits_return(r.reservation_id, r.amount, 'reservation_expiry', p_now);
    UPDATE reservations
       SET status = credits_status_expired(), returned_amount = amount, settled_at = p_now
     WHERE reservation_id = r.reservation_id;
    PERFORM credits_emit('reservation_expired', p_account, p_now, NULL, NULL, r.reservation_id,
                         NULL, r.amount, 0, 0);
  END LOOP;

  -- One grant at a time, in expiry order, so that each event's available_after is the
  -- balance right after that grant expired.
  FOR r IN
    SELECT grant_id, remaining_amount FROM grants
     WHERE account_id = p_account AND remaining_amount > 0 AND expires_at <= p_now
     ORDER BY expires_at, grant_id
  LOOP
    UPDATE grants
       SET expired_amount = expired_amount + r.remaining_amount, remaining_amount = 0
     WHERE grant_id = r.grant_id;
    INSERT INTO ledger_entries (account_id, grant_id, kind, amount, created_at)
    VALUES (p_account, r.grant_id, 'grant_expiry', -r.remaining_amount, p_now);
    PERFORM credits_emit('grant_expired', p_account, p_now, NULL, r.grant_id, NULL, NULL,
                         r.remaining_amount, 0, 0);
  END LOOP;
END $$;

-- Locks an account's row and settles it; false when the account has never had a grant.
-- p_lock_timeout_ms is what remains of the client's deadline: a call that waits for the
-- lock longer than its caller waits for the answer stops itself (55P03), instead of
-- running on after the caller has gone.
CREATE OR REPLACE FUNCTION credits_lock(p_account text, p_now timestamptz,
                                        p_lock_timeout_ms integer)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF p_lock_timeout_ms IS NOT NULL THEN
    PERFORM set_config('lock_timeout', p_lock_timeout_ms::text, true);
  END IF;
  PERFORM 1 FROM accounts WHERE account_id = p_account FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM credits_settle(p_account, p_now);
  RETURN true;
END $$;

-- The result id of an earlier request with this key, NULL when the key is new;
-- CR004 when the key was used for a different request.
CREATE OR REPLACE FUNCTION credits_replayed(p_caller text, p_key text, p_operation text,
                                            p_hash bytea)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
  k idempotency_keys;
BEGIN
  SELECT * INTO k FROM idempotency_keys WHERE caller = p_caller AND idempotency_key = p_key;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF k.operation <> p_operation OR k.request_hash <> p_hash THEN
    RAISE EXCEPTION 'idempotency key reused' USING ERRCODE = 'CR004';
  END IF;
  RETURN k.result_id;
END $$;

-- Records a key at the end of a successful request. A conflict means another account's
-- transaction took the same key meanwhile: that is a different request.
CREATE OR REPLACE FUNCTION credits_remember(p_caller text, p_key text, p_operation text,
                                            p_hash bytea, p_account text, p_result uuid,
                                            p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO idempotency_keys (caller, idempotency_key, operation, request_hash, account_id,
                                result_id, created_at)
  VALUES (p_caller, p_key, p_operation, p_hash, p_account, p_result, p_now)
  ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'idempotency key reused' USING ERRCODE = 'CR004';
  END IF;
END $$;

-- The burn-down order, written only here: an account's grants, lowest priority first,
-- then soonest expiry (never-expiring last), then oldest; the grant id makes the order
-- total. burn_rank counts from 1; running is what remains in this grant and every one
-- before it. Only the grants with credits remaining unless p_with_finished.
-- credits_reserve spends in this order, credits_list_grants lists and pages in it. A
-- STABLE, non-STRICT SQL function of one SELECT: the planner inlines it into the query
-- that calls it, so it costs no call, the account's condition reaches the grants' scan
-- as if written there, and both window columns come from one sort.
CREATE OR REPLACE FUNCTION credits_burn_order(p_account text, p_with_finished boolean)
RETURNS TABLE (grant_id uuid, remaining_amount bigint, burn_rank bigint, running numeric)
LANGUAGE sql STABLE AS $$
  SELECT g.grant_id, g.remaining_amount, row_number() OVER w, sum(g.remaining_amount) OVER w
    FROM grants g
   WHERE g.account_id = p_account AND (p_with_finished OR g.remaining_amount > 0)
  WINDOW w AS (ORDER BY g.priority, g.expires_at NULLS LAST, g.created_at, g.grant_id)
$$;

-- What an account spent since p_since: the credits held or captured by its reservations
-- created since then (an active one counts its amount, a confirmed one what it captured
-- of its hold, a released or expired one nothing: giving credits back gives the room
-- back), plus the overruns settled since then (counted when they happened, whenever
-- their reservation was made), plus the credits it transferred out since then (moving
-- credits to another account spends them here, or a limit could be passed by moving
-- credits away and spending them there; credits transferred in count nothing). Each sum
-- reads a covering index.
CREATE OR REPLACE FUNCTION credits_spent_since(p_account text, p_since timestamptz)
RETURNS TABLE (spent bigint, first_at timestamptz)
LANGUAGE sql STABLE AS $$
  SELECT (coalesce(h.spent, 0) + coalesce(o.spent, 0) + coalesce(t.spent, 0))::bigint,
         least(h.first_at, o.first_at, t.first_at)
    FROM (SELECT sum(CASE r.status WHEN credits_status_reserved() THEN r.amount
                                   WHEN credits_status_confirmed()
                                     THEN r.confirmed_amount - r.overrun_amount
                                   ELSE 0 END) AS spent,
                 min(r.created_at) FILTER (WHERE r.status IN (credits_status_reserved(),
                                                              credits_status_confirmed()))
                   AS first_at
            FROM reservations r
           WHERE r.account_id = p_account AND r.created_at >= p_since) h,
         (SELECT sum(r.overrun_amount) AS spent, min(r.settled_at) AS first_at
            FROM reservations r
           WHERE r.account_id = p_account AND r.overrun_amount > 0
             AND r.settled_at >= p_since) o,
         (SELECT sum(x.amount) AS spent, min(x.created_at) AS first_at
            FROM transfers x
           WHERE x.from_account_id = p_account AND x.created_at >= p_since) t
$$;

-- The account's spend limits that are set, in the order they are checked (day, month,
-- rolling), each with what the period has used and when it resets: the next UTC day or
-- month, and for the rolling window the moment its oldest counted spend leaves it
-- (NULL when nothing is counted). All are whole seconds, as the refusal names them.
CREATE OR REPLACE FUNCTION credits_spend(a accounts, p_now timestamptz)
RETURNS TABLE (limit_name text, limit_amount bigint, used bigint, resets_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_start timestamptz;
  v_window interval;
  s record;
BEGIN
  IF a.spend_limit_day > 0 THEN
    v_start := date_trunc('day', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    SELECT * INTO s FROM credits_spent_since(a.account_id, v_start);
    RETURN QUERY SELECT 'day'::text, a.spend_limit_day, s.spent, v_start + interval '1 day';
  END IF;
  IF a.spend_limit_month > 0 THEN
    v_start := date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    SELECT * INTO s FROM credits_spent_since(a.account_id, v_start);
    RETURN QUERY SELECT 'month'::text, a.spend_limit_month, s.spent,
                        v_start + interval '1 month';
  END IF;
  IF a.spend_limit_rolling > 0 THEN
    v_window := make_interval(hours => a.spend_limit_rolling_hours);
    SELECT * INTO s FROM credits_spent_since(a.account_id, p_now - v_window);
    -- The oldest spend counts while now - window <= first_at, so it leaves the window
    -- only after first_at + window: the first whole second after that (not that moment
    -- rounded up, which for a spend at a whole second is the moment it still counts).
    RETURN QUERY SELECT 'rolling'::text, a.spend_limit_rolling, s.spent,
                        date_trunc('second', s.first_at + v_window) + interval '1 second';
  END IF;
END $$;

-- CR030 when spending p_extra more now would pass one of the account's spend limits,
-- naming the first that would (in credits_spend's order) and when it resets, as JSON in
-- the error's DETAIL; never an amount.
CREATE OR REPLACE FUNCTION credits_check_spend(a accounts, p_extra bigint, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  s record;
BEGIN
  FOR s IN SELECT * FROM credits_spend(a, p_now) LOOP
    IF s.used + p_extra > s.limit_amount THEN
      RAISE EXCEPTION 'spend limit exceeded' USING ERRCODE = 'CR030',
        DETAIL = jsonb_build_object(
          'limit', s.limit_name,
          'resets_at', to_char(coalesce(s.resets_at, p_now + make_interval(
                                 hours => a.spend_limit_rolling_hours)) AT TIME ZONE 'UTC',
                               'YYYY-MM-DD"T"HH24:MI:SS"Z"'))::text;
    END IF;
  END LOOP;
END $$;

-- An account's spend limits as GetAccount shows them: a JSON array of credits_spend's rows.
CREATE OR REPLACE FUNCTION credits_spend_json(a accounts, p_now timestamptz) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'limit', s.limit_name, 'limit_amount', s.limit_amount, 'used', s.used,
           'resets_at', to_char(s.resets_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))),
         '[]'::jsonb)
    FROM credits_spend(a, p_now) s
$$;

-- The version of a job type's price in effect at p_at: the one with the latest
-- effective_at not after p_at, the later set of two with the same. NULL when there is
-- none; a retired version (no unit price) is returned as such.
CREATE OR REPLACE FUNCTION credits_price_at(p_job_type text, p_at timestamptz)
RETURNS prices LANGUAGE sql STABLE AS $$
  SELECT * FROM prices
   WHERE job_type = p_job_type AND effective_at <= p_at
   ORDER BY effective_at DESC, version DESC
   LIMIT 1
$$;

-- Holds p_amount, or, when p_quantity is given, p_quantity units of p_job_type at the
-- price in effect at p_now (at most p_amount_max), recording the version it used. The
-- price is read once, after the replay check: a replay answers the original whatever the
-- price is now. Prices are global and append-only: reading one takes no lock, and the
-- reservation's foreign key share-locks the version's row, which nothing ever updates
-- (SetPrice only inserts), so it waits for nobody.
CREATE OR REPLACE FUNCTION credits_reserve(
  p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_ttl interval,
  p_job_id text, p_job_type text, p_description text, p_metadata jsonb, p_now timestamptz,
  p_lock_timeout_ms integer, p_quantity bigint DEFAULT NULL, p_amount_max bigint DEFAULT NULL)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
DECLARE
  a accounts;
  v_id uuid;
  v_grants uuid[];
  v_amounts bigint[];
  v_total bigint;
  v_price prices;
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  v_id := credits_replayed(p_caller, p_key, 'reserve', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT * FROM reservations WHERE reservation_id = v_id;
    RETURN;
  END IF;
  -- After the replay: a hold taken before the freeze (or a limit) is still answered as
  -- it was. Then in the documented order: frozen, the spend limits, the balance.
  SELECT * INTO a FROM accounts WHERE account_id = p_account;
  IF a.frozen THEN
    RAISE EXCEPTION 'account frozen' USING ERRCODE = 'CR012';
  END IF;
  IF p_quantity IS NOT NULL THEN
    v_price := credits_price_at(p_job_type, p_now);
    IF v_price.unit_price IS NULL THEN
      RAISE EXCEPTION 'no price in effect' USING ERRCODE = 'CR050';
    END IF;
    -- In numeric: the product of two bigints may not fit one.
    IF v_price.unit_price::numeric * p_quantity > p_amount_max THEN
      RAISE EXCEPTION 'priced amount above the maximum' USING ERRCODE = 'CR051';
    END IF;
    p_amount := v_price.unit_price * p_quantity;
  END IF;
  PERFORM credits_check_spend(a, p_amount, p_now);

  -- In burn-down order, as far as it takes to cover p_amount. Settling has already
  -- expired every grant past its expiry.
  SELECT array_agg(grant_id ORDER BY burn_rank),
         array_agg(least(remaining_amount, p_amount - (running - remaining_amount))
                   ORDER BY burn_rank),
         sum(least(remaining_amount, p_amount - (running - remaining_amount)))
    INTO v_grants, v_amounts, v_total
    FROM credits_burn_order(p_account, false) WHERE running - remaining_amount < p_amount;
  IF coalesce(v_total, 0) < p_amount THEN
    RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'CR001';
  END IF;

  v_id := gen_random_uuid();
  INSERT INTO reservations (reservation_id, account_id, amount, job_id, job_type, description,
                            metadata, created_at, expires_at, price_version, unit_price,
                            quantity)
  VALUES (v_id, p_account, p_amount, p_job_id, p_job_type, p_description, p_metadata,
          p_now, p_now + p_ttl, v_price.version, v_price.unit_price, p_quantity);
  INSERT INTO allocations (reservation_id, grant_id, account_id, burn_rank, amount)
  SELECT v_id, t.grant_id, p_account, t.burn_rank, t.amount
    FROM unnest(v_grants, v_amounts) WITH ORDINALITY AS t(grant_id, amount, burn_rank);
  UPDATE grants g SET remaining_amount = g.remaining_amount - t.amount
    FROM unnest(v_grants, v_amounts) AS t(grant_id, amount)
   WHERE g.grant_id = t.grant_id;
  INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount, created_at)
  SELECT p_account, t.grant_id, v_id, 'reserve', -t.amount, p_now
    FROM unnest(v_grants, v_amounts) AS t(grant_id, amount);
  PERFORM credits_remember(p_caller, p_key, 'reserve', p_hash, p_account, v_id, p_now);
  PERFORM credits_emit('reserved', p_account, p_now, p_caller, NULL, v_id, NULL, p_amount, 0, 0);
  RETURN QUERY SELECT * FROM reservations WHERE reservation_id = v_id;
END $$;

-- Locks and settles the account, then finds its reservation. A reservation of another
-- account is CR002 exactly like one that does not exist.
CREATE OR REPLACE FUNCTION credits_locked_reservation(p_account text, p_reservation uuid,
                                                      p_now timestamptz,
                                                      p_lock_timeout_ms integer)
RETURNS reservations LANGUAGE plpgsql AS $$
DECLARE
  r reservations;
BEGIN
  IF credits_lock(p_account, p_now, p_lock_timeout_ms) THEN
    SELECT * INTO r FROM reservations
     WHERE reservation_id = p_reservation AND account_id = p_account;
    IF FOUND THEN
      RETURN r;
    END IF;
  END IF;
  RAISE EXCEPTION 'reservation not found' USING ERRCODE = 'CR002';
END $$;

-- Captures p_amount (NULL: all) of a reservation; the rest goes back at once. Confirming
-- a confirmed reservation again returns it when the request is the same (no amount, or
-- the amount it captured); another amount is CR003, so the caller learns it was not done.
-- More than the reservation is CR006 unless p_allow_overrun: then the whole hold is
-- captured and the extra (the overrun) is taken now, in the documented order: a frozen
-- account refuses (CR012), then the spend limits (CR030); the extra comes from the
-- available credits in burn-down order, and what they do not cover becomes the account's
-- debt, as far as its overdraft limit allows (beyond: CR001, and nothing changes).
-- p_quantity instead of p_amount: the final quantity of a priced reservation, captured at
-- the unit price the reservation stored (CR052 when it was not priced), never today's; a
-- quantity above the reserved one is an overrun priced the same way.
CREATE OR REPLACE FUNCTION credits_confirm(p_account text, p_reservation uuid,
                                           p_amount bigint, p_allow_overrun boolean,
                                           p_now timestamptz, p_lock_timeout_ms integer,
                                           p_quantity bigint DEFAULT NULL)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
DECLARE
  r reservations;
  a accounts;
  v_capture bigint;
  v_extra bigint := 0;
  v_debt bigint := 0;
  v_grants uuid[];
  v_amounts bigint[];
  v_taken bigint;
BEGIN
  r := credits_locked_reservation(p_account, p_reservation, p_now, p_lock_timeout_ms);
  IF p_quantity IS NOT NULL THEN
    IF r.unit_price IS NULL THEN
      RAISE EXCEPTION 'reservation not priced' USING ERRCODE = 'CR052';
    END IF;
    IF p_quantity > r.quantity AND NOT p_allow_overrun THEN
      RAISE EXCEPTION 'capture exceeds the reservation' USING ERRCODE = 'CR006';
    END IF;
    -- In numeric: an overrun's quantity may be large enough to overflow the product.
    IF r.unit_price::numeric * p_quantity > credits_account_credits_max() THEN
      RAISE EXCEPTION 'priced amount above the maximum' USING ERRCODE = 'CR051';
    END IF;
    p_amount := r.unit_price * p_quantity;
  END IF;
  IF r.status = credits_status_confirmed()
     AND (p_amount IS NULL OR p_amount = r.confirmed_amount) THEN
    RETURN NEXT r;
    RETURN;
  END IF;
  IF r.status <> credits_status_reserved() THEN
    RAISE EXCEPTION 'reservation not active' USING ERRCODE = 'CR003';
  END IF;
  v_capture := coalesce(p_amount, r.amount);
  IF v_capture > r.amount THEN
    IF NOT p_allow_overrun THEN
      RAISE EXCEPTION 'capture exceeds the reservation' USING ERRCODE = 'CR006';
    END IF;
    v_extra := v_capture - r.amount;
    SELECT * INTO a FROM accounts WHERE account_id = p_account;
    IF a.frozen THEN
      RAISE EXCEPTION 'account frozen' USING ERRCODE = 'CR012';
    END IF;
    PERFORM credits_check_spend(a, v_extra, p_now);
    SELECT array_agg(grant_id ORDER BY burn_rank),
           array_agg(least(remaining_amount, v_extra - (running - remaining_amount))
                     ORDER BY burn_rank),
           sum(least(remaining_amount, v_extra - (running - remaining_amount)))
      INTO v_grants, v_amounts, v_taken
      FROM credits_burn_order(p_account, false) WHERE running - remaining_amount < v_extra;
    v_debt := v_extra - coalesce(v_taken, 0);
    IF a.debt + v_debt > a.overdraft_limit THEN
      RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'CR001';
    END IF;
    UPDATE grants g SET remaining_amount = g.remaining_amount - t.amount
      FROM unnest(v_grants, v_amounts) AS t(grant_id, amount)
     WHERE g.grant_id = t.grant_id;
    INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount, created_at)
    SELECT p_account, t.grant_id, p_reservation, 'overrun', -t.amount, p_now
      FROM unnest(v_grants, v_amounts) AS t(grant_id, amount);
    IF v_debt > 0 THEN
      UPDATE accounts SET debt = debt + v_debt WHERE account_id = p_account;
    END IF;
  ELSIF v_capture < r.amount THEN
    PERFORM credits_return(p_reservation, r.amount - v_capture, 'confirm_return', p_now);
  END IF;
  UPDATE reservations
     SET status = credits_status_confirmed(), confirmed_amount = v_capture,
         returned_amount = greatest(amount - v_capture, 0), overrun_amount = v_extra,
         overrun_debt_amount = v_debt, settled_at = p_now
   WHERE reservation_id = p_reservation
  RETURNING * INTO r;
  PERFORM credits_emit('confirmed', p_account, p_now, NULL, NULL, p_reservation, NULL,
                       v_capture, r.returned_amount, 0);
  RETURN NEXT r;
END $$;

-- Gives all of a reservation back. Releasing a released or expired one returns it as is.
CREATE OR REPLACE FUNCTION credits_release(p_account text, p_reservation uuid, p_reason text,
                                           p_now timestamptz, p_lock_timeout_ms integer)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
DECLARE
  r reservations;
BEGIN
  r := credits_locked_reservation(p_account, p_reservation, p_now, p_lock_timeout_ms);
  IF r.status IN (credits_status_released(), credits_status_expired()) THEN
    RETURN NEXT r;
    RETURN;
  END IF;
  IF r.status <> credits_status_reserved() THEN
    RAISE EXCEPTION 'reservation not active' USING ERRCODE = 'CR003';
  END IF;
  PERFORM credits_return(p_reservation, r.amount, 'release', p_now);
  UPDATE reservations
     SET status = credits_status_released(), returned_amount = amount,
         release_reason = p_reason, settled_at = p_now
   WHERE reservation_id = p_reservation
  RETURNING * INTO r;
  PERFORM credits_emit('released', p_account, p_now, NULL, NULL, p_reservation, NULL, r.amount,
                       0, 0);
  RETURN NEXT r;
END $$;

-- Adds a grant. A replay answers from the stored result before anything that depends on
-- time is checked: a grant whose expires_at has passed since is still the same grant.
-- The account's overdraft debt (from overruns) is paid first, out of the new credits: the
-- grant records it as debt_paid_amount, the ledger as a debt_repayment entry.
CREATE OR REPLACE FUNCTION credits_grant(
  p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_source smallint,
  p_external_ref text, p_expires_at timestamptz, p_priority integer, p_description text,
  p_metadata jsonb, p_now timestamptz, p_lock_timeout_ms integer)
RETURNS SETOF grants LANGUAGE plpgsql AS $$
DECLARE
  v_id uuid;
  v_held numeric;
  v_repaid bigint;
BEGIN
  INSERT INTO accounts (account_id, created_at) VALUES (p_account, p_now) ON CONFLICT DO NOTHING;
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  v_id := credits_replayed(p_caller, p_key, 'grant', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT * FROM grants WHERE grant_id = v_id;
    RETURN;
  END IF;
  IF p_expires_at IS NOT NULL AND p_expires_at <= p_now THEN
    RAISE EXCEPTION 'grant expiry is not in the future' USING ERRCODE = 'CR009';
  END IF;
  IF p_source = credits_source_signup_bonus() AND EXISTS (
       SELECT 1 FROM grants WHERE account_id = p_account AND source = p_source) THEN
    RAISE EXCEPTION 'signup bonus already granted' USING ERRCODE = 'CR007';
  END IF;
  IF p_external_ref IS NOT NULL AND EXISTS (
       SELECT 1 FROM grants WHERE external_ref = p_external_ref) THEN
    RAISE EXCEPTION 'external reference already granted' USING ERRCODE = 'CR008';
  END IF;
  SELECT coalesce(sum(remaining_amount), 0)
         + (SELECT coalesce(sum(amount), 0) FROM reservations
             WHERE account_id = p_account AND status = credits_status_reserved())
    INTO v_held FROM grants WHERE account_id = p_account;
  IF v_held + p_amount > credits_account_credits_max() THEN
    RAISE EXCEPTION 'account credits limit' USING ERRCODE = 'CR010';
  END IF;
  -- The account's overdraft debt is paid first, from the new credits.
  SELECT least(debt, p_amount) INTO v_repaid FROM accounts WHERE account_id = p_account;
  v_id := gen_random_uuid();
  INSERT INTO grants (grant_id, account_id, source, original_amount, remaining_amount, priority,
                      external_ref, expires_at, description, metadata, created_at,
                      debt_paid_amount)
  VALUES (v_id, p_account, p_source, p_amount, p_amount - v_repaid, p_priority, p_external_ref,
          p_expires_at, p_description, p_metadata, p_now, v_repaid);
  INSERT INTO ledger_entries (account_id, grant_id, kind, amount, created_at)
  VALUES (p_account, v_id, 'grant', p_amount, p_now);
  IF v_repaid > 0 THEN
    UPDATE accounts SET debt = debt - v_repaid WHERE account_id = p_account;
    INSERT INTO ledger_entries (account_id, grant_id, kind, amount, created_at)
    VALUES (p_account, v_id, 'debt_repayment', -v_repaid, p_now);
  END IF;
  PERFORM credits_remember(p_caller, p_key, 'grant', p_hash, p_account, v_id, p_now);
  PERFORM credits_emit('granted', p_account, p_now, p_caller, v_id, NULL, NULL, p_amount, 0, 0);
  RETURN QUERY SELECT * FROM grants WHERE grant_id = v_id;
END $$;

-- Revocations are claims on a grant. Each call without a series is a claim of its own;
-- calls of one `p_series` (a charge's running refund, a dispute) share one claim that
-- only grows (its highest total counts), so deliveries in any order converge. A claim
-- of 0 is everything the grant gave. `p_withdraw` withdraws a series' claim for good (a
-- dispute won); later calls of that series claim nothing.
--
-- `p_as_of` is the time of the fact a series' call states (a Stripe event's `created`).
-- A running total can go down (a refund that failed), and the highest would then keep
-- credits the payer got back; so the claim of the call with the latest `p_as_of` stands,
-- up or down, and a call older than the standing claim changes nothing. Calls with the
-- same `p_as_of`, or without one, keep the highest, as before; a claim standing without
-- one (stored before the parameter existed) is older than any call with one, so the
-- first timed call after an upgrade can still lower it. Deliveries in any order still
-- converge: on the latest fact, and among equal times on the highest. A timed call states
-- a total as of its time, so its 0 is nothing (a running total back to 0), not everything.
--
-- The grant then owes its target: the sum of its claims still standing, at most what it
-- gave. Moving up, what remains is taken at once and the rest recorded as unrecovered (a
-- debt that credits coming back to the grant pay first); moving down, outstanding debt
-- is cancelled first and then revoked credits come back to the grant (expiring at once
-- if the grant has expired). So the outcome depends on which claims stand, never on the
-- order in which they arrived.
CREATE OR REPLACE FUNCTION credits_revoke(
  p_caller text, p_key text, p_hash bytea, p_account text, p_grant uuid, p_external_ref text,
  p_amount bigint, p_series text, p_withdraw boolean, p_as_of timestamptz, p_reason text,
  p_now timestamptz, p_lock_timeout_ms integer)
RETURNS TABLE (out_grant grants, out_revoked bigint, out_unrecovered bigint,
               out_restored bigint, out_cancelled bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_grant uuid;
  v_account text;
  v_id uuid;
  g grants;
  v_claim_key text;
  v_series_total bigint;
  v_target bigint;
  v_owed bigint;
  v_asked bigint := 0;
  v_revoked bigint := 0;
  v_cancelled bigint := 0;
  v_restored bigint := 0;
  v_expire bigint := 0;
BEGIN
  IF p_grant IS NOT NULL THEN
    SELECT gr.grant_id, gr.account_id INTO v_grant, v_account
      FROM grants gr WHERE gr.grant_id = p_grant;
  ELSE
    SELECT gr.grant_id, gr.account_id INTO v_grant, v_account
      FROM grants gr WHERE gr.external_ref = p_external_ref;
  END IF;
  IF v_grant IS NULL OR (p_account <> '' AND v_account <> p_account) THEN
    RAISE EXCEPTION 'grant not found' USING ERRCODE = 'CR005';
  END IF;
  PERFORM credits_lock(v_account, p_now, p_lock_timeout_ms);
  v_id := credits_replayed(p_caller, p_key, 'revoke', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT gr, rv.revoked_amount, rv.unrecovered_amount, rv.restored_amount,
                        rv.cancelled_amount
                   FROM revocations rv JOIN grants gr ON gr.grant_id = rv.grant_id
                  WHERE rv.revocation_id = v_id;
    RETURN;
  END IF;

  SELECT * INTO g FROM grants gr WHERE gr.grant_id = v_grant;
  v_id := gen_random_uuid();
  v_claim_key := CASE WHEN p_series IS NULL THEN 'call:' || v_id ELSE 'series:' || p_series END;
  INSERT INTO revocation_claims AS c (grant_id, claim_key, account_id, claimed_amount, withdrawn,
                                      as_of)
  VALUES (v_grant, v_claim_key, v_account,
          CASE WHEN p_withdraw THEN 0
               WHEN p_amount = 0 AND p_as_of IS NULL THEN g.original_amount
               ELSE least(p_amount, g.original_amount) END,
          p_withdraw, p_as_of)
  ON CONFLICT (grant_id, claim_key) DO UPDATE
    -- A withdrawal keeps the amount (withdrawn for good, it no longer counts); a newer
    -- fact replaces it, up or down; an older one leaves it; otherwise the highest.
    SET claimed_amount = CASE
          WHEN EXCLUDED.withdrawn THEN c.claimed_amount
          WHEN EXCLUDED.as_of IS NOT NULL AND (c.as_of IS NULL OR EXCLUDED.as_of > c.as_of)
            THEN EXCLUDED.claimed_amount
          WHEN EXCLUDED.as_of < c.as_of THEN c.claimed_amount
          ELSE greatest(c.claimed_amount, EXCLUDED.claimed_amount) END,
        withdrawn = c.withdrawn OR EXCLUDED.withdrawn,
        as_of = CASE WHEN EXCLUDED.withdrawn THEN c.as_of
                     ELSE greatest(c.as_of, EXCLUDED.as_of) END
  RETURNING CASE WHEN p_series IS NULL THEN NULL ELSE c.claimed_amount END
    INTO v_series_total;

  SELECT least(coalesce(sum(c.claimed_amount), 0), g.original_amount) INTO v_target
    FROM revocation_claims c WHERE c.grant_id = v_grant AND NOT c.withdrawn;
  v_owed := g.revoked_amount + g.unrecovered_amount;
  IF v_target > v_owed THEN
    -- Expired credits are gone already: they can be neither taken nor owed.
    v_asked := greatest(least(v_target, g.original_amount - g.expired_amount) - v_owed, 0);
    v_revoked := least(v_asked, g.remaining_amount);
  ELSIF v_target < v_owed THEN
    v_cancelled := least(v_owed - v_target, g.unrecovered_amount);
    v_restored := v_owed - v_target - v_cancelled;
    v_expire := CASE WHEN g.expires_at <= p_now THEN v_restored ELSE 0 END;
  END IF;

  INSERT INTO revocations (revocation_id, grant_id, account_id, requested_amount, revoked_amount,
                           unrecovered_amount, restored_amount, cancelled_amount,
                           cumulative_series, series_total, withdraw, as_of, reason,
                           created_at)
  VALUES (v_id, v_grant, v_account, v_asked, v_revoked, v_asked - v_revoked, v_restored,
          v_cancelled, p_series, v_series_total, p_withdraw, p_as_of, p_reason, p_now);
  UPDATE grants gr
     SET remaining_amount = gr.remaining_amount - v_revoked + v_restored - v_expire,
         revoked_amount = gr.revoked_amount + v_revoked - v_restored,
         unrecovered_amount = gr.unrecovered_amount + (v_asked - v_revoked) - v_cancelled,
         expired_amount = gr.expired_amount + v_expire
   WHERE gr.grant_id = v_grant;
  IF v_revoked > 0 THEN
    INSERT INTO ledger_entries (account_id, grant_id, revocation_id, kind, amount, created_at)
    VALUES (v_account, v_grant, v_id, 'revoke', -v_revoked, p_now);
  END IF;
  IF v_restored > 0 THEN
    INSERT INTO ledger_entries (account_id, grant_id, revocation_id, kind, amount, created_at)
    VALUES (v_account, v_grant, v_id, 'revoke_reversal', v_restored, p_now);
  END IF;
  IF v_expire > 0 THEN
    INSERT INTO ledger_entries (account_id, grant_id, revocation_id, kind, amount, created_at)
    VALUES (v_account, v_grant, v_id, 'grant_expiry', -v_expire, p_now);
  END IF;
  PERFORM credits_remember(p_caller, p_key, 'revoke', p_hash, v_account, v_id, p_now);
  -- A call that changed nothing (its claim was already counted) is no event.
  IF v_asked > 0 THEN
    PERFORM credits_emit('revoked', v_account, p_now, p_caller, v_grant, NULL, v_id, v_revoked,
                         0, v_asked - v_revoked);
  ELSIF v_restored + v_cancelled > 0 THEN
    PERFORM credits_emit('revocation_withdrawn', v_account, p_now, p_caller, v_grant, NULL, v_id,
                         v_restored, 0, v_cancelled);
  END IF;
  RETURN QUERY SELECT gr, v_revoked, v_asked - v_revoked, v_restored, v_cancelled
                 FROM grants gr WHERE gr.grant_id = v_grant;
END $$;

-- One transfer with its lots, in the source's burn-down order: what credits_transfer
-- answers, the first time and on every replay.
CREATE OR REPLACE FUNCTION credits_transfer_result(p_transfer uuid)
RETURNS TABLE (out_transfer_id uuid, out_from_account_id text, out_to_account_id text,
               out_amount bigint, out_description text, out_created_at timestamptz,
               out_source_grant_id uuid, out_destination_grant_id uuid, out_lot_amount bigint,
               out_expires_at timestamptz, out_priority integer)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN QUERY
    SELECT t.transfer_id, t.from_account_id, t.to_account_id, t.amount, t.description,
           t.created_at, l.source_grant_id, l.destination_grant_id, l.amount, d.expires_at,
           d.priority
      FROM transfers t
      JOIN transfer_lots l ON l.transfer_id = t.transfer_id
      JOIN grants d ON d.grant_id = l.destination_grant_id
     WHERE t.transfer_id = p_transfer
     ORDER BY l.burn_rank;
END $$;

-- Moves p_amount of p_from's available credits to p_to, in one transaction under both
-- accounts' locks, taken in one fixed order (the lower account id, bytewise, first) so
-- that transfers in opposite directions queue behind each other instead of deadlocking;
-- every other function takes one account's lock only. The credits leave p_from's grants
-- in burn-down order, as far as it takes, and each lot arrives on p_to as a grant of
-- source TRANSFER with the lot's expiry and priority: spent, expiring and ranked there
-- exactly as it would have been at home. The source's grants keep their claims: a
-- revocation that finds their credits transferred away records debt on them, as for
-- credits spent. A frozen source refuses (after a replay was answered); a frozen
-- destination receives. The amount counts as the source's spend in every period of its
-- spend limits (credits_spent_since): one it would pass is CR030, as for a Reserve.
CREATE OR REPLACE FUNCTION credits_transfer(
  p_caller text, p_key text, p_hash bytea, p_from text, p_to text, p_amount bigint,
  p_description text, p_now timestamptz, p_lock_timeout_ms integer)
RETURNS TABLE (out_transfer_id uuid, out_from_account_id text, out_to_account_id text,
               out_amount bigint, out_description text, out_created_at timestamptz,
               out_source_grant_id uuid, out_destination_grant_id uuid, out_lot_amount bigint,
               out_expires_at timestamptz, out_priority integer)
LANGUAGE plpgsql AS $$
DECLARE
  a accounts;
  v_id uuid;
  v_available bigint;
  v_held numeric;
  v_destination uuid;
  l record;
BEGIN
  INSERT INTO accounts (account_id, created_at) VALUES (p_to, p_now) ON CONFLICT DO NOTHING;
  IF p_from COLLATE "C" < p_to COLLATE "C" THEN
    PERFORM credits_lock(p_from, p_now, p_lock_timeout_ms);
    PERFORM credits_lock(p_to, p_now, p_lock_timeout_ms);
  ELSE
    PERFORM credits_lock(p_to, p_now, p_lock_timeout_ms);
    PERFORM credits_lock(p_from, p_now, p_lock_timeout_ms);
  END IF;
  v_id := credits_replayed(p_caller, p_key, 'transfer', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT * FROM credits_transfer_result(v_id);
    RETURN;
  END IF;
  -- In Reserve's documented order: frozen, the spend limits, the balance. A source that
  -- has no row has no settings (a is all NULL): not frozen, no limit, and no credits.
  SELECT * INTO a FROM accounts WHERE account_id = p_from;
  IF a.frozen THEN
    RAISE EXCEPTION 'account frozen' USING ERRCODE = 'CR012';
  END IF;
  PERFORM credits_check_spend(a, p_amount, p_now);
  SELECT coalesce(sum(remaining_amount), 0) INTO v_available
    FROM grants WHERE account_id = p_from AND remaining_amount > 0;
  IF v_available < p_amount THEN
    RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'CR001';
  END IF;
  SELECT coalesce(sum(remaining_amount), 0)
         + (SELECT coalesce(sum(amount), 0) FROM reservations
             WHERE account_id = p_to AND status = credits_status_reserved())
    INTO v_held FROM grants WHERE account_id = p_to;
  IF v_held + p_amount > credits_account_credits_max() THEN
    RAISE EXCEPTION 'account credits limit' USING ERRCODE = 'CR010';
  END IF;

  v_id := gen_random_uuid();
  INSERT INTO transfers (transfer_id, from_account_id, to_account_id, amount, description,
                         caller, created_at)
  VALUES (v_id, p_from, p_to, p_amount, p_description, p_caller, p_now);
  -- The query is read whole before the loop changes any grant.
  FOR l IN
    SELECT o.grant_id, o.burn_rank, g.expires_at, g.priority,
           least(o.remaining_amount, p_amount - (o.running - o.remaining_amount))::bigint
             AS amount
      FROM credits_burn_order(p_from, false) o JOIN grants g ON g.grant_id = o.grant_id
     WHERE o.running - o.remaining_amount < p_amount
     ORDER BY o.burn_rank
  LOOP
    v_destination := gen_random_uuid();
    UPDATE grants SET remaining_amount = remaining_amount - l.amount
     WHERE grant_id = l.grant_id;
    INSERT INTO grants (grant_id, account_id, source, original_amount, remaining_amount,
                        priority, expires_at, description, created_at)
    VALUES (v_destination, p_to, credits_source_transfer(), l.amount, l.amount, l.priority,
            l.expires_at, p_description, p_now);
    INSERT INTO transfer_lots (transfer_id, burn_rank, source_grant_id, destination_grant_id,
                               amount)
    VALUES (v_id, l.burn_rank, l.grant_id, v_destination, l.amount);
    INSERT INTO ledger_entries (account_id, grant_id, transfer_id, kind, amount, created_at)
    VALUES (p_from, l.grant_id, v_id, 'transfer_out', -l.amount, p_now),
           (p_to, v_destination, v_id, 'transfer_in', l.amount, p_now);
    PERFORM credits_emit('granted', p_to, p_now, p_caller, v_destination, NULL, NULL,
                         l.amount, 0, 0);
  END LOOP;
  PERFORM credits_emit('transfer_sent', p_from, p_now, p_caller, NULL, NULL, NULL, p_amount,
                       0, 0);
  PERFORM credits_remember(p_caller, p_key, 'transfer', p_hash, p_from, v_id, p_now);
  RETURN QUERY SELECT * FROM credits_transfer_result(v_id);
END $$;

-- A transfer balances at commit (a constraint trigger, deferred): its lots add up to its
-- amount, its entries take exactly that from the source and give it to the destination,
-- and each lot arrived as a TRANSFER grant of the destination with the source grant's
-- expiry and priority.
CREATE OR REPLACE FUNCTION credits_check_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT coalesce(sum(amount), 0) FROM transfer_lots
       WHERE transfer_id = NEW.transfer_id) <> NEW.amount
     OR (SELECT coalesce(sum(amount), 0) FROM ledger_entries
          WHERE transfer_id = NEW.transfer_id AND kind = 'transfer_out'
            AND account_id = NEW.from_account_id) <> -NEW.amount
     OR (SELECT coalesce(sum(amount), 0) FROM ledger_entries
          WHERE transfer_id = NEW.transfer_id AND kind = 'transfer_in'
            AND account_id = NEW.to_account_id) <> NEW.amount
     OR EXISTS (
          SELECT 1 FROM transfer_lots l
            JOIN grants s ON s.grant_id = l.source_grant_id
            JOIN grants d ON d.grant_id = l.destination_grant_id
           WHERE l.transfer_id = NEW.transfer_id
             AND (s.account_id <> NEW.from_account_id OR d.account_id <> NEW.to_account_id
                  OR d.source <> credits_source_transfer() OR d.original_amount <> l.amount
                  OR d.expires_at IS DISTINCT FROM s.expires_at OR d.priority <> s.priority))
  THEN
    RAISE EXCEPTION 'transfer % does not balance', NEW.transfer_id;
  END IF;
  RETURN NULL;
END $$;

-- An account's balance as of p_now, after settling what time has decided: the same rules
-- as every write, so a balance never shows credits a Reserve would refuse. With the
-- account's overdraft debt.
CREATE OR REPLACE FUNCTION credits_balance(p_account text, p_now timestamptz,
                                           p_lock_timeout_ms integer)
RETURNS TABLE (available bigint, reserved bigint, expiring_amount bigint,
               next_expiry timestamptz, debt bigint)
LANGUAGE plpgsql AS $$
BEGIN
  IF NOT credits_lock(p_account, p_now, p_lock_timeout_ms) THEN
    RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, NULL::timestamptz, 0::bigint;
    RETURN;
  END IF;
  RETURN QUERY
    SELECT coalesce(sum(g.remaining_amount), 0)::bigint,
           (SELECT coalesce(sum(r.amount), 0)::bigint FROM reservations r
             WHERE r.account_id = p_account AND r.status = credits_status_reserved()),
           coalesce(sum(g.remaining_amount) FILTER (WHERE g.expires_at IS NOT NULL), 0)::bigint,
           min(g.expires_at),
           (SELECT a.debt FROM accounts a WHERE a.account_id = p_account)
      FROM grants g
     WHERE g.account_id = p_account AND g.remaining_amount > 0;
END $$;

-- One page of an account's reservations, newest first, after settling the account, so
-- an overdue reservation is listed as expired. p_after_* is the last row of the
-- previous page (NULL for the first page).
CREATE OR REPLACE FUNCTION credits_usage(p_account text, p_limit integer,
                                         p_after_created timestamptz, p_after_id uuid,
                                         p_now timestamptz, p_lock_timeout_ms integer)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  IF p_after_created IS NULL THEN
    RETURN QUERY
      SELECT * FROM reservations r WHERE r.account_id = p_account
       ORDER BY r.created_at DESC, r.reservation_id DESC LIMIT p_limit;
  ELSE
    RETURN QUERY
      SELECT * FROM reservations r
       WHERE r.account_id = p_account
         AND (r.created_at, r.reservation_id) < (p_after_created, p_after_id)
       ORDER BY r.created_at DESC, r.reservation_id DESC LIMIT p_limit;
  END IF;
END $$;

-- One page of an account's grants in burn-down order (the order credits_reserve spends
-- them in), each with what active reservations hold of it, after settling the account.
-- Unless p_include_finished, only grants with credits remaining or held. p_after is the
-- last grant of the previous page: a grant's place among the account's grants never
-- changes (its sort key does not; new grants only come between), so the grants ranked
-- after it now are exactly those after it then. A p_after of another account ends the
-- listing.
CREATE OR REPLACE FUNCTION credits_list_grants(p_account text, p_include_finished boolean,
                                               p_limit integer, p_after uuid,
                                               p_now timestamptz, p_lock_timeout_ms integer)
RETURNS TABLE (out_grant grants, out_held bigint)
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  RETURN QUERY
    WITH held AS (
      SELECT al.grant_id, sum(al.amount - al.returned_amount)::bigint AS amount
        FROM reservations r JOIN allocations al ON al.reservation_id = r.reservation_id
       WHERE r.account_id = p_account AND r.status = credits_status_reserved()
       GROUP BY al.grant_id
    ), ordered AS (
      SELECT o.grant_id, o.burn_rank FROM credits_burn_order(p_account, true) o
    )
    SELECT g, coalesce(h.amount, 0)::bigint
      FROM ordered o JOIN grants g ON g.grant_id = o.grant_id
      LEFT JOIN held h ON h.grant_id = g.grant_id
     WHERE (p_include_finished OR g.remaining_amount > 0 OR h.amount > 0)
       AND (p_after IS NULL
            OR o.burn_rank > (SELECT l.burn_rank FROM ordered l WHERE l.grant_id = p_after))
     ORDER BY o.burn_rank
     LIMIT p_limit;
END $$;

-- One page of an account's statement, newest first, after settling the account, so that
-- the entries of an account add up to its available balance. Each entry comes with the
-- balance right after it: the sum of it and every earlier entry of the account, whatever
-- the filters (p_since inclusive, p_until exclusive, p_kinds; NULL means no filter).
-- Entry ids grow in the order entries were made (an account's writers serialize on its
-- lock), so they order the statement even where two instances' clocks disagree.
CREATE OR REPLACE FUNCTION credits_list_entries(p_account text, p_since timestamptz,
                                                p_until timestamptz, p_kinds text[],
                                                p_limit integer, p_after bigint,
                                                p_now timestamptz, p_lock_timeout_ms integer)
RETURNS TABLE (entry_id bigint, kind text, amount bigint, grant_id uuid,
               reservation_id uuid, revocation_id uuid, created_at timestamptz,
               balance_after bigint, transfer_id uuid)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  RETURN QUERY
    SELECT s.entry_id, s.kind, s.amount, s.grant_id, s.reservation_id, s.revocation_id,
           s.created_at, s.balance_after, s.transfer_id
      FROM (SELECT e.*, sum(e.amount) OVER (ORDER BY e.entry_id)::bigint AS balance_after
              FROM ledger_entries e WHERE e.account_id = p_account) s
     WHERE (p_after IS NULL OR s.entry_id < p_after)
       AND (p_since IS NULL OR s.created_at >= p_since)
       AND (p_until IS NULL OR s.created_at < p_until)
       AND (p_kinds IS NULL OR s.kind = ANY (p_kinds))
     ORDER BY s.entry_id DESC
     LIMIT p_limit;
END $$;

-- One reservation of an account after settling it (an overdue one reads as expired),
-- one row per grant it was taken from, in burn-down order. Another account's
-- reservation is CR002, exactly like one that does not exist.
CREATE OR REPLACE FUNCTION credits_get_reservation(p_account text, p_reservation uuid,
                                                   p_now timestamptz,
                                                   p_lock_timeout_ms integer)
RETURNS TABLE (out_reservation reservations, out_grant_id uuid, out_amount bigint,
               out_returned bigint)
LANGUAGE plpgsql AS $$
DECLARE
  r reservations;
BEGIN
  r := credits_locked_reservation(p_account, p_reservation, p_now, p_lock_timeout_ms);
  RETURN QUERY
    SELECT r, al.grant_id, al.amount, al.returned_amount FROM allocations al
     WHERE al.reservation_id = p_reservation ORDER BY al.burn_rank;
END $$;

-- Moves an active reservation's expiry to p_now + p_ttl: a long job's heartbeat. Expired,
-- confirmed and released reservations are CR003. An expiry past the reservation's
-- creation plus p_lifetime_max is CR011 and changes nothing: refused rather than cut
-- short, so that the caller never believes it holds credits longer than it does.
CREATE OR REPLACE FUNCTION credits_extend(p_account text, p_reservation uuid, p_ttl interval,
                                          p_lifetime_max interval, p_now timestamptz,
                                          p_lock_timeout_ms integer)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
DECLARE
  r reservations;
BEGIN
  r := credits_locked_reservation(p_account, p_reservation, p_now, p_lock_timeout_ms);
  IF r.status <> credits_status_reserved() THEN
    RAISE EXCEPTION 'reservation not active' USING ERRCODE = 'CR003';
  END IF;
  IF p_now + p_ttl > r.created_at + p_lifetime_max THEN
    RAISE EXCEPTION 'reservation lifetime exceeded' USING ERRCODE = 'CR011';
  END IF;
  UPDATE reservations SET expires_at = p_now + p_ttl
   WHERE reservation_id = p_reservation
  RETURNING * INTO r;
  RETURN NEXT r;
END $$;

-- The accounts that have something due, longest overdue first, for the sweeper, which
-- settles each in a transaction of its own: an account that fails is passed over, not
-- retried ahead of every other one.
CREATE OR REPLACE FUNCTION credits_due_accounts(p_now timestamptz, p_limit integer)
RETURNS SETOF text LANGUAGE sql STABLE AS $$
  SELECT account_id FROM (
    SELECT account_id, min(expires_at) AS due_at FROM reservations
     WHERE status = credits_status_reserved() AND expires_at <= p_now GROUP BY account_id
    UNION ALL
    SELECT account_id, min(expires_at) FROM grants
     WHERE remaining_amount > 0 AND expires_at <= p_now GROUP BY account_id
  ) due
  GROUP BY account_id ORDER BY min(due_at), account_id LIMIT p_limit
$$;

-- GetUsageSummary: the reservations that finished in [p_since, p_until) (every account's,
-- or p_account's), per job type, most finished first. Finished reservations never change,
-- so no account is locked; the partial indexes on settled_at keep it to the window.
CREATE OR REPLACE FUNCTION credits_usage_summary(p_account text, p_since timestamptz,
                                                 p_until timestamptz, p_limit integer)
RETURNS TABLE (job_type text, confirmed bigint, released bigint, expired bigint,
               captured_amount bigint)
LANGUAGE sql STABLE AS $$
  SELECT r.job_type,
         count(*) FILTER (WHERE r.status = credits_status_confirmed()),
         count(*) FILTER (WHERE r.status = credits_status_released()),
         count(*) FILTER (WHERE r.status = credits_status_expired()),
         coalesce(sum(r.confirmed_amount), 0)::bigint
    FROM reservations r
   WHERE r.settled_at >= p_since AND r.settled_at < p_until
     AND (p_account IS NULL OR r.account_id = p_account)
   GROUP BY r.job_type
   ORDER BY count(*) DESC, r.job_type
   LIMIT p_limit
$$;

-- An account's settings as one JSON object keyed by AccountSettings' field names: the
-- shape the audit trail stores before and after each change. A setting that takes the
-- service-wide default (NULL) is left out.
CREATE OR REPLACE FUNCTION credits_settings_json(a accounts) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_strip_nulls(jsonb_build_object(
    'frozen', a.frozen, 'overdraft_limit', a.overdraft_limit,
    'spend_limit_day', a.spend_limit_day, 'spend_limit_month', a.spend_limit_month,
    'spend_limit_rolling', a.spend_limit_rolling,
    'spend_limit_rolling_hours', a.spend_limit_rolling_hours,
    'balance_alert_thresholds', to_jsonb(a.balance_alert_thresholds)))
$$;

-- GetAccount: the account's row, settings included, with its spend limits' use
-- (credits_spend_json), after settling it like every read. No row when the account has
-- neither credits nor settings (the defaults apply).
CREATE OR REPLACE FUNCTION credits_get_account(p_account text, p_now timestamptz,
                                               p_lock_timeout_ms integer)
RETURNS TABLE (out_account accounts, out_spend jsonb) LANGUAGE plpgsql AS $$
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  RETURN QUERY SELECT a, credits_spend_json(a, p_now) FROM accounts a
                WHERE a.account_id = p_account;
END $$;

-- UpdateAccountSettings: sets the fields p_mask names to their values in p_settings (keyed
-- like credits_settings_json), creating the account when it has no row yet, so that an
-- account can be configured (or frozen) before its first credits. A change that changes
-- something is audited; one that changes nothing answers the account as it is.
CREATE OR REPLACE FUNCTION credits_update_account_settings(
  p_caller text, p_account text, p_settings jsonb, p_mask text[], p_reason text,
  p_now timestamptz, p_lock_timeout_ms integer)
RETURNS TABLE (out_account accounts, out_spend jsonb) LANGUAGE plpgsql AS $$
DECLARE
  a accounts;
  v_before jsonb;
BEGIN
  INSERT INTO accounts (account_id, created_at) VALUES (p_account, p_now) ON CONFLICT DO NOTHING;
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  SELECT * INTO a FROM accounts WHERE account_id = p_account;
  v_before := credits_settings_json(a);
  IF 'frozen' = ANY (p_mask) THEN
    a.frozen := (p_settings->>'frozen')::boolean;
  END IF;
  IF 'overdraft_limit' = ANY (p_mask) THEN
    a.overdraft_limit := (p_settings->>'overdraft_limit')::bigint;
  END IF;
  IF 'spend_limit_day' = ANY (p_mask) THEN
    a.spend_limit_day := (p_settings->>'spend_limit_day')::bigint;
  END IF;
  IF 'spend_limit_month' = ANY (p_mask) THEN
    a.spend_limit_month := (p_settings->>'spend_limit_month')::bigint;
  END IF;
  IF 'spend_limit_rolling' = ANY (p_mask) THEN
    a.spend_limit_rolling := (p_settings->>'spend_limit_rolling')::bigint;
  END IF;
  IF 'spend_limit_rolling_hours' = ANY (p_mask) THEN
    a.spend_limit_rolling_hours := (p_settings->>'spend_limit_rolling_hours')::integer;
  END IF;
  -- JSON null: the service-wide default; a list (maybe empty): the account's own.
  IF 'balance_alert_thresholds' = ANY (p_mask) THEN
    a.balance_alert_thresholds := CASE
      WHEN jsonb_typeof(p_settings->'balance_alert_thresholds') = 'array' THEN
        ARRAY(SELECT x::bigint
                FROM jsonb_array_elements_text(p_settings->'balance_alert_thresholds') x)
      END;
  END IF;
  IF credits_settings_json(a) IS DISTINCT FROM v_before THEN
    UPDATE accounts
       SET frozen = a.frozen, overdraft_limit = a.overdraft_limit,
           spend_limit_day = a.spend_limit_day, spend_limit_month = a.spend_limit_month,
           spend_limit_rolling = a.spend_limit_rolling,
           spend_limit_rolling_hours = a.spend_limit_rolling_hours,
           balance_alert_thresholds = a.balance_alert_thresholds,
           settings_version = settings_version + 1,
           settings_updated_at = p_now, settings_updated_by = p_caller
     WHERE account_id = p_account
    RETURNING * INTO a;
    INSERT INTO account_settings_changes (account_id, version, changed_at, changed_by,
                                          update_mask, before, after, reason)
    VALUES (p_account, a.settings_version, p_now, p_caller, p_mask, v_before,
            credits_settings_json(a), p_reason);
    PERFORM credits_emit('account_settings_changed', p_account, p_now, p_caller, NULL, NULL,
                         NULL, 0, 0, 0);
  END IF;
  RETURN QUERY SELECT a, credits_spend_json(a, p_now);
END $$;

-- SetPrice: appends a version of p_job_type's price (p_unit_price NULL: retired) set by
-- p_caller at p_now, in effect from p_effective_at (not before p_now: the ledger checks
-- it, the table's constraint too), and its event (price_set or price_retired), which
-- belongs to no account, in the same transaction. Versions of one job type are set one
-- at a time: the transaction-level advisory lock of the job type (class 1 of the
-- two-key advisory locks, whose space no other lock of the service uses; a hash
-- collision between job types only serializes them too), taken before the version is
-- numbered, so versions, commits and events of a job type follow one order. The event's
-- position is raised to the job type's latest one, as an account's is (credits_emit).
-- The lock is waited for at most p_lock_timeout_ms, as an account's (credits_lock).
-- Reserve takes no lock on prices and never waits for this one.
CREATE OR REPLACE FUNCTION credits_set_price(p_caller text, p_job_type text,
                                             p_unit_price bigint, p_unit text,
                                             p_effective_at timestamptz, p_reason text,
                                             p_now timestamptz, p_lock_timeout_ms integer)
RETURNS SETOF prices LANGUAGE plpgsql AS $$
DECLARE
  v_price prices;
BEGIN
  IF p_lock_timeout_ms IS NOT NULL THEN
    PERFORM set_config('lock_timeout', p_lock_timeout_ms::text, true);
  END IF;
  PERFORM pg_advisory_xact_lock(1, hashtext(p_job_type));
  INSERT INTO prices (job_type, unit_price, unit, effective_at, set_at, set_by, reason)
  VALUES (p_job_type, p_unit_price, p_unit, p_effective_at, p_now, p_caller, p_reason)
  RETURNING * INTO v_price;
  INSERT INTO ledger_events (stream_position, event_type, account_id, occurred_at, caller,
                             amount, returned_amount, unrecovered_amount, available_after,
                             job_type, price_version, unit_price, unit, effective_at, reason)
  SELECT greatest(pg_current_xact_id()::text::bigint, max(e.stream_position)),
         CASE WHEN v_price.unit_price IS NULL THEN 'price_retired' ELSE 'price_set' END,
         NULL, p_now, p_caller, 0, 0, 0, 0, v_price.job_type, v_price.version,
         v_price.unit_price, v_price.unit, v_price.effective_at, v_price.reason
    FROM ledger_events e WHERE e.job_type = p_job_type;
  RETURN NEXT v_price;
END $$;

-- ListPrices: one page of the versions in effect at p_at, by job type, retired job types
-- left out. p_after is the version that ended the previous page: its job type never
-- changes, so the page goes on after that job type.
CREATE OR REPLACE FUNCTION credits_list_prices(p_at timestamptz, p_limit integer,
                                               p_after bigint)
RETURNS SETOF prices LANGUAGE sql STABLE AS $$
  SELECT (c.p).* FROM (
    SELECT DISTINCT ON (pr.job_type) pr AS p FROM prices pr
     WHERE pr.effective_at <= p_at
       AND (p_after IS NULL
            OR pr.job_type > (SELECT l.job_type FROM prices l WHERE l.version = p_after))
     ORDER BY pr.job_type, pr.effective_at DESC, pr.version DESC
  ) c
   WHERE (c.p).unit_price IS NOT NULL
   ORDER BY (c.p).job_type
   LIMIT p_limit
$$;

-- ListPriceHistory: one page of a job type's versions, newest first, future ones included.
CREATE OR REPLACE FUNCTION credits_price_history(p_job_type text, p_limit integer,
                                                 p_after bigint)
RETURNS SETOF prices LANGUAGE sql STABLE AS $$
  SELECT * FROM prices
   WHERE job_type = p_job_type AND (p_after IS NULL OR version < p_after)
   ORDER BY version DESC
   LIMIT p_limit
$$;

-- WatchEvents' read: the events after the cursor (p_after_position, p_after_seq) in stream
-- order, of one account or all (p_account NULL; price events have no account, so only
-- then) and of some types (p_types NULL: all), only those below the horizon: positions under the oldest transaction still running,
-- which every transaction that can still commit writes at or above (credits_emit). A
-- cursor below what the retention sweep deleted is CR020: the events after it are gone.
-- With the events, out_horizon: the horizon itself, where a stream "from now" starts.
CREATE OR REPLACE FUNCTION credits_read_events(p_after_position bigint, p_after_seq bigint,
                                               p_account text, p_types text[],
                                               p_limit integer)
RETURNS TABLE (out_event ledger_events, out_horizon bigint)
LANGUAGE plpgsql AS $$
DECLARE
  f event_retention;
BEGIN
  SELECT * INTO f FROM event_retention;
  IF FOUND AND (p_after_position, p_after_seq) < (f.deleted_through_position,
                                                  f.deleted_through_seq) THEN
    RAISE EXCEPTION 'event cursor older than retention' USING ERRCODE = 'CR020';
  END IF;
  RETURN QUERY
    WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon)
    SELECT x.ev, h.horizon FROM h LEFT JOIN LATERAL (
      SELECT ev FROM ledger_events ev
       WHERE (ev.stream_position, ev.seq) > (p_after_position, p_after_seq)
         AND ev.stream_position < h.horizon
         AND (p_account IS NULL OR ev.account_id = p_account)
         AND (p_types IS NULL OR ev.event_type = ANY (p_types))
       ORDER BY ev.stream_position, ev.seq
       LIMIT p_limit) x ON true;
END $$;

-- Deletes up to p_limit events that occurred before p_cutoff, oldest first, and records
-- the latest deleted cursor, below which credits_read_events answers CR020. The outbox
-- is not the ledger: its rows go by age only.
CREATE OR REPLACE FUNCTION credits_sweep_events(p_cutoff timestamptz, p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_position bigint;
  v_seq bigint;
  v_deleted integer;
BEGIN
  WITH gone AS (
    DELETE FROM ledger_events WHERE event_id = ANY (ARRAY(
      SELECT event_id FROM ledger_events WHERE occurred_at < p_cutoff
       ORDER BY stream_position, seq LIMIT p_limit))
    RETURNING stream_position, seq
  )
  SELECT count(*)::integer, max(stream_position),
         (array_agg(seq ORDER BY stream_position DESC, seq DESC))[1]
    INTO v_deleted, v_position, v_seq FROM gone;
  IF v_deleted > 0 THEN
    INSERT INTO event_retention AS r (singleton, deleted_through_position, deleted_through_seq)
    VALUES (true, v_position, v_seq)
    ON CONFLICT (singleton) DO UPDATE
      SET deleted_through_position = EXCLUDED.deleted_through_position,
          deleted_through_seq = EXCLUDED.deleted_through_seq
      WHERE (r.deleted_through_position, r.deleted_through_seq)
            < (EXCLUDED.deleted_through_position, EXCLUDED.deleted_through_seq);
  END IF;
  RETURN v_deleted;
END $$;

CREATE OR REPLACE FUNCTION credits_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END $$;

CREATE OR REPLACE TRIGGER ledger_entries_append_only
  BEFORE UPDATE OR DELETE ON ledger_entries
  FOR EACH ROW EXECUTE FUNCTION credits_refuse_change();
CREATE OR REPLACE TRIGGER ledger_entries_no_truncate
  BEFORE TRUNCATE ON ledger_entries
  FOR EACH STATEMENT EXECUTE FUNCTION credits_refuse_change();
CREATE OR REPLACE TRIGGER account_settings_changes_append_only
  BEFORE UPDATE OR DELETE ON account_settings_changes
  FOR EACH ROW EXECUTE FUNCTION credits_refuse_change();
CREATE OR REPLACE TRIGGER account_settings_changes_no_truncate
  BEFORE TRUNCATE ON account_settings_changes
  FOR EACH STATEMENT EXECUTE FUNCTION credits_refuse_change();
CREATE OR REPLACE TRIGGER prices_append_only
  BEFORE UPDATE OR DELETE ON prices
  FOR EACH ROW EXECUTE FUNCTION credits_refuse_change();
CREATE OR REPLACE TRIGGER prices_no_truncate
  BEFORE TRUNCATE ON prices
  FOR EACH STATEMENT EXECUTE FUNCTION credits_refuse_change();
