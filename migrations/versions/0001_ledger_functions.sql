-- Server-side functions of the ledger: each RPC that changes an account is one call,
-- one transaction, under one lock (the account's row, always taken first, so writers of
-- one account serialize and cannot deadlock). Errors the caller must see are raised
-- with SQLSTATEs of class 'CR' that the store maps to domain errors; anything else is
-- a bug and becomes INTERNAL.
--   CR001 insufficient credits          CR002 reservation not found
--   CR003 reservation not active        CR004 idempotency key reused
--   CR005 grant not found               CR006 capture exceeds the reservation
--   CR007 signup bonus already granted  CR008 external reference already granted

-- Gives `p_amount` of a reservation back to the grants it came from, the last-burned
-- allocation first. Credits going back to an expired grant expire at once; credits going
-- back to a grant that owes revocations (unrecovered_amount) pay that debt first.
CREATE FUNCTION credits_return(p_reservation uuid, p_amount bigint, p_kind text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  a record;
  v_left bigint := p_amount;
  v_take bigint;
  v_collect bigint;
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
    UPDATE allocations SET returned_amount = returned_amount + v_take
     WHERE reservation_id = p_reservation AND grant_id = a.grant_id;
    INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount)
    VALUES (a.account_id, a.grant_id, p_reservation, p_kind, v_take);
    IF a.expires_at IS NOT NULL AND a.expires_at <= p_now THEN
      UPDATE grants SET expired_amount = expired_amount + v_take WHERE grant_id = a.grant_id;
      INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount)
      VALUES (a.account_id, a.grant_id, p_reservation, 'grant_expiry', -v_take);
    ELSE
      v_collect := least(v_take, a.unrecovered_amount);
      UPDATE grants
         SET remaining_amount = remaining_amount + v_take - v_collect,
             revoked_amount = revoked_amount + v_collect,
             unrecovered_amount = unrecovered_amount - v_collect
       WHERE grant_id = a.grant_id;
      IF v_collect > 0 THEN
        INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount)
        VALUES (a.account_id, a.grant_id, p_reservation, 'revoke', -v_collect);
      END IF;
    END IF;
    v_left := v_left - v_take;
  END LOOP;
  IF v_left <> 0 THEN
    RAISE EXCEPTION 'allocations of reservation % do not cover the return', p_reservation;
  END IF;
END $$;

-- Settles what time has decided for one locked account: reservations past expires_at go
-- back exactly as a Release would, and grants past expires_at expire. Every function
-- below calls it first, so expiry never waits for the sweeper.
CREATE FUNCTION credits_settle(p_account text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r record;
BEGIN
  FOR r IN
    SELECT reservation_id, amount FROM reservations
     WHERE account_id = p_account AND status = 1 AND expires_at <= p_now
     ORDER BY expires_at, reservation_id
  LOOP
    PERFORM credits_return(r.reservation_id, r.amount, 'reservation_expiry', p_now);
    UPDATE reservations SET status = 4, returned_amount = amount, settled_at = p_now
     WHERE reservation_id = r.reservation_id;
  END LOOP;

  WITH due AS (
    SELECT grant_id, remaining_amount FROM grants
     WHERE account_id = p_account AND remaining_amount > 0 AND expires_at <= p_now
  ), expired AS (
    UPDATE grants g
       SET expired_amount = g.expired_amount + due.remaining_amount, remaining_amount = 0
      FROM due WHERE g.grant_id = due.grant_id
    RETURNING g.grant_id
  )
  INSERT INTO ledger_entries (account_id, grant_id, kind, amount)
  SELECT p_account, due.grant_id, 'grant_expiry', -due.remaining_amount
    FROM due JOIN expired ON expired.grant_id = due.grant_id;
END $$;

-- Locks an account's row and settles it; false when the account has never had a grant.
-- p_lock_timeout_ms is what remains of the client's deadline: a call that waits for the
-- lock longer than its caller waits for the answer stops itself (55P03), instead of
-- running on after the caller has gone.
CREATE FUNCTION credits_lock(p_account text, p_now timestamptz, p_lock_timeout_ms integer)
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
CREATE FUNCTION credits_replayed(p_caller text, p_key text, p_operation text, p_hash bytea)
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
CREATE FUNCTION credits_remember(p_caller text, p_key text, p_operation text, p_hash bytea,
                                 p_account text, p_result uuid)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO idempotency_keys (caller, idempotency_key, operation, request_hash, account_id, result_id)
  VALUES (p_caller, p_key, p_operation, p_hash, p_account, p_result)
  ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'idempotency key reused' USING ERRCODE = 'CR004';
  END IF;
END $$;

CREATE FUNCTION credits_reserve(
  p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_ttl interval,
  p_job_id text, p_job_type text, p_description text, p_metadata jsonb,
  p_lock_timeout_ms integer DEFAULT NULL)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
DECLARE
  v_now timestamptz := now();
  v_id uuid;
  v_grants uuid[];
  v_amounts bigint[];
  v_total bigint;
BEGIN
  PERFORM credits_lock(p_account, v_now, p_lock_timeout_ms);
  v_id := credits_replayed(p_caller, p_key, 'reserve', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT * FROM reservations WHERE reservation_id = v_id;
    RETURN;
  END IF;

  -- Burn-down order: lowest priority, then soonest expiry (never-expiring last), then oldest.
  WITH ranked AS (
    SELECT grant_id, remaining_amount,
           sum(remaining_amount) OVER w AS running, row_number() OVER w AS burn_rank
      FROM grants
     WHERE account_id = p_account AND remaining_amount > 0
       AND (expires_at IS NULL OR expires_at > v_now)
    WINDOW w AS (ORDER BY priority, expires_at NULLS LAST, created_at, grant_id)
  )
  SELECT array_agg(grant_id ORDER BY burn_rank),
         array_agg(least(remaining_amount, p_amount - (running - remaining_amount)) ORDER BY burn_rank),
         sum(least(remaining_amount, p_amount - (running - remaining_amount)))
    INTO v_grants, v_amounts, v_total
    FROM ranked WHERE running - remaining_amount < p_amount;
  IF coalesce(v_total, 0) < p_amount THEN
    RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'CR001';
  END IF;

  v_id := gen_random_uuid();
  INSERT INTO reservations (reservation_id, account_id, amount, job_id, job_type, description,
                            metadata, created_at, expires_at)
  VALUES (v_id, p_account, p_amount, p_job_id, p_job_type, p_description, p_metadata,
          v_now, v_now + p_ttl);
  INSERT INTO allocations (reservation_id, grant_id, account_id, burn_rank, amount)
  SELECT v_id, t.grant_id, p_account, t.burn_rank, t.amount
    FROM unnest(v_grants, v_amounts) WITH ORDINALITY AS t(grant_id, amount, burn_rank);
  UPDATE grants g SET remaining_amount = g.remaining_amount - t.amount
    FROM unnest(v_grants, v_amounts) AS t(grant_id, amount)
   WHERE g.grant_id = t.grant_id;
  INSERT INTO ledger_entries (account_id, grant_id, reservation_id, kind, amount)
  SELECT p_account, t.grant_id, v_id, 'reserve', -t.amount
    FROM unnest(v_grants, v_amounts) AS t(grant_id, amount);
  PERFORM credits_remember(p_caller, p_key, 'reserve', p_hash, p_account, v_id);
  RETURN QUERY SELECT * FROM reservations WHERE reservation_id = v_id;
END $$;

-- Locks and settles the account, then finds its reservation. A reservation of another
-- account is CR002 exactly like one that does not exist.
CREATE FUNCTION credits_locked_reservation(p_account text, p_reservation uuid,
                                           p_now timestamptz, p_lock_timeout_ms integer)
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

-- Captures p_amount (NULL: all) of a reservation; the rest goes back at once.
CREATE FUNCTION credits_confirm(p_account text, p_reservation uuid, p_amount bigint,
                                p_lock_timeout_ms integer DEFAULT NULL)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
DECLARE
  v_now timestamptz := now();
  r reservations;
  v_capture bigint;
BEGIN
  r := credits_locked_reservation(p_account, p_reservation, v_now, p_lock_timeout_ms);
  IF r.status = 2 THEN
    RETURN NEXT r;
    RETURN;
  END IF;
  IF r.status <> 1 THEN
    RAISE EXCEPTION 'reservation not active' USING ERRCODE = 'CR003';
  END IF;
  v_capture := coalesce(p_amount, r.amount);
  IF v_capture > r.amount THEN
    RAISE EXCEPTION 'capture exceeds the reservation' USING ERRCODE = 'CR006';
  END IF;
  IF v_capture < r.amount THEN
    PERFORM credits_return(p_reservation, r.amount - v_capture, 'confirm_return', v_now);
  END IF;
  UPDATE reservations
     SET status = 2, confirmed_amount = v_capture, returned_amount = amount - v_capture,
         settled_at = v_now
   WHERE reservation_id = p_reservation
  RETURNING * INTO r;
  RETURN NEXT r;
END $$;

-- Gives all of a reservation back. Releasing a released or expired one returns it as is.
CREATE FUNCTION credits_release(p_account text, p_reservation uuid, p_reason text,
                                p_lock_timeout_ms integer DEFAULT NULL)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
DECLARE
  v_now timestamptz := now();
  r reservations;
BEGIN
  r := credits_locked_reservation(p_account, p_reservation, v_now, p_lock_timeout_ms);
  IF r.status IN (3, 4) THEN
    RETURN NEXT r;
    RETURN;
  END IF;
  IF r.status <> 1 THEN
    RAISE EXCEPTION 'reservation not active' USING ERRCODE = 'CR003';
  END IF;
  PERFORM credits_return(p_reservation, r.amount, 'release', v_now);
  UPDATE reservations
     SET status = 3, returned_amount = amount, release_reason = p_reason, settled_at = v_now
   WHERE reservation_id = p_reservation
  RETURNING * INTO r;
  RETURN NEXT r;
END $$;

CREATE FUNCTION credits_grant(
  p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_source smallint,
  p_external_ref text, p_expires_at timestamptz, p_priority integer, p_description text,
  p_metadata jsonb, p_lock_timeout_ms integer DEFAULT NULL)
RETURNS SETOF grants LANGUAGE plpgsql AS $$
DECLARE
  v_id uuid;
BEGIN
  INSERT INTO accounts (account_id) VALUES (p_account) ON CONFLICT DO NOTHING;
  PERFORM credits_lock(p_account, now(), p_lock_timeout_ms);
  v_id := credits_replayed(p_caller, p_key, 'grant', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT * FROM grants WHERE grant_id = v_id;
    RETURN;
  END IF;
  IF p_source = 2 AND EXISTS (SELECT 1 FROM grants WHERE account_id = p_account AND source = 2) THEN
    RAISE EXCEPTION 'signup bonus already granted' USING ERRCODE = 'CR007';
  END IF;
  IF p_external_ref IS NOT NULL AND EXISTS (SELECT 1 FROM grants WHERE external_ref = p_external_ref) THEN
    RAISE EXCEPTION 'external reference already granted' USING ERRCODE = 'CR008';
  END IF;
  v_id := gen_random_uuid();
  INSERT INTO grants (grant_id, account_id, source, original_amount, remaining_amount, priority,
                      external_ref, expires_at, description, metadata)
  VALUES (v_id, p_account, p_source, p_amount, p_amount, p_priority, p_external_ref,
          p_expires_at, p_description, p_metadata);
  INSERT INTO ledger_entries (account_id, grant_id, kind, amount)
  VALUES (p_account, v_id, 'grant', p_amount);
  PERFORM credits_remember(p_caller, p_key, 'grant', p_hash, p_account, v_id);
  RETURN QUERY SELECT * FROM grants WHERE grant_id = v_id;
END $$;

-- Takes back up to p_amount of one grant. p_amount = 0 asks for everything not yet
-- revoked; with p_series, p_amount is the series' running total and only what exceeds
-- the series' highest total so far is asked for. What is asked but already spent or held
-- is recorded as unrecovered (a debt that credits coming back to the grant pay first).
CREATE FUNCTION credits_revoke(
  p_caller text, p_key text, p_hash bytea, p_account text, p_grant uuid, p_external_ref text,
  p_amount bigint, p_series text, p_reason text, p_lock_timeout_ms integer DEFAULT NULL)
RETURNS TABLE (out_grant grants, out_revoked bigint, out_unrecovered bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_now timestamptz := now();
  v_grant uuid;
  v_account text;
  v_id uuid;
  g grants;
  v_series_before bigint;
  v_asked bigint;
  v_revoked bigint;
BEGIN
  IF p_grant IS NOT NULL THEN
    SELECT gr.grant_id, gr.account_id INTO v_grant, v_account FROM grants gr WHERE gr.grant_id = p_grant;
  ELSE
    SELECT gr.grant_id, gr.account_id INTO v_grant, v_account FROM grants gr WHERE gr.external_ref = p_external_ref;
  END IF;
  IF v_grant IS NULL OR (p_account <> '' AND v_account <> p_account) THEN
    RAISE EXCEPTION 'grant not found' USING ERRCODE = 'CR005';
  END IF;
  PERFORM credits_lock(v_account, v_now, p_lock_timeout_ms);
  v_id := credits_replayed(p_caller, p_key, 'revoke', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT gr, rv.revoked_amount, rv.unrecovered_amount
                   FROM revocations rv JOIN grants gr ON gr.grant_id = rv.grant_id
                  WHERE rv.revocation_id = v_id;
    RETURN;
  END IF;

  SELECT * INTO g FROM grants gr WHERE gr.grant_id = v_grant;
  IF p_series IS NOT NULL THEN
    SELECT coalesce(max(rv.series_total), 0) INTO v_series_before
      FROM revocations rv WHERE rv.grant_id = v_grant AND rv.cumulative_series = p_series;
    v_asked := greatest(p_amount - v_series_before, 0);
  ELSIF p_amount = 0 THEN
    v_asked := g.original_amount;
  ELSE
    v_asked := p_amount;
  END IF;
  -- Never ask for more than the grant still owes: what was granted less what was revoked,
  -- asked for already, or expired.
  v_asked := least(v_asked, g.original_amount - g.revoked_amount - g.unrecovered_amount - g.expired_amount);
  v_revoked := least(v_asked, g.remaining_amount);

  v_id := gen_random_uuid();
  INSERT INTO revocations (revocation_id, grant_id, account_id, requested_amount, revoked_amount,
                           unrecovered_amount, cumulative_series, series_total, reason)
  VALUES (v_id, v_grant, v_account, v_asked, v_revoked, v_asked - v_revoked, p_series,
          CASE WHEN p_series IS NULL THEN NULL ELSE greatest(p_amount, v_series_before) END,
          p_reason);
  UPDATE grants gr
     SET remaining_amount = gr.remaining_amount - v_revoked,
         revoked_amount = gr.revoked_amount + v_revoked,
         unrecovered_amount = gr.unrecovered_amount + (v_asked - v_revoked)
   WHERE gr.grant_id = v_grant;
  IF v_revoked > 0 THEN
    INSERT INTO ledger_entries (account_id, grant_id, revocation_id, kind, amount)
    VALUES (v_account, v_grant, v_id, 'revoke', -v_revoked);
  END IF;
  PERFORM credits_remember(p_caller, p_key, 'revoke', p_hash, v_account, v_id);
  RETURN QUERY SELECT gr, v_revoked, v_asked - v_revoked FROM grants gr WHERE gr.grant_id = v_grant;
END $$;

-- Settles every account that has something due (the sweeper); the work is done one
-- account per transaction by the caller, this only finds them.
CREATE FUNCTION credits_due_accounts(p_now timestamptz, p_limit integer)
RETURNS SETOF text LANGUAGE sql STABLE AS $$
  SELECT account_id FROM (
    SELECT account_id FROM reservations WHERE status = 1 AND expires_at <= p_now
    UNION
    SELECT account_id FROM grants WHERE remaining_amount > 0 AND expires_at <= p_now
  ) due LIMIT p_limit
$$;

CREATE FUNCTION credits_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP;
END $$;

CREATE TRIGGER ledger_entries_append_only
  BEFORE UPDATE OR DELETE ON ledger_entries
  FOR EACH ROW EXECUTE FUNCTION credits_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate
  BEFORE TRUNCATE ON ledger_entries
  FOR EACH STATEMENT EXECUTE FUNCTION credits_refuse_change();
