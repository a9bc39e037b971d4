-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
CREATE OR REPLACE FUNCTION public.credits_default_alert_thresholds()
 RETURNS bigint[]
 LANGUAGE sql
 STABLE
AS $function$
  SELECT coalesce(string_to_array(nullif(current_setting('credits.balance_alert_thresholds',
                                                         true), ''), ',')::bigint[],
                  '{}'::bigint[])
$function$;
REVOKE ALL ON FUNCTION credits_default_alert_thresholds() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_default_alert_thresholds() TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_insert_event(p_type text, p_account text, p_now timestamp with time zone, p_caller text, p_grant uuid, p_reservation uuid, p_revocation uuid, p_amount bigint, p_returned bigint, p_unrecovered bigint, p_threshold bigint, p_available bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
END $function$;
REVOKE ALL ON FUNCTION credits_insert_event(text,text,timestamp with time zone,text,uuid,uuid,uuid,bigint,bigint,bigint,bigint,bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_insert_event(text,text,timestamp with time zone,text,uuid,uuid,uuid,bigint,bigint,bigint,bigint,bigint) TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_emit(p_type text, p_account text, p_now timestamp with time zone, p_caller text, p_grant uuid, p_reservation uuid, p_revocation uuid, p_amount bigint, p_returned bigint, p_unrecovered bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
END $function$;
REVOKE ALL ON FUNCTION credits_emit(text,text,timestamp with time zone,text,uuid,uuid,uuid,bigint,bigint,bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_emit(text,text,timestamp with time zone,text,uuid,uuid,uuid,bigint,bigint,bigint) TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_return(p_reservation uuid, p_amount bigint, p_kind text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_settle(p_account text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_reserve(p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_ttl interval, p_job_id text, p_job_type text, p_description text, p_metadata jsonb, p_now timestamp with time zone, p_lock_timeout_ms integer, p_quantity bigint DEFAULT NULL::bigint, p_amount_max bigint DEFAULT NULL::bigint)
 RETURNS SETOF reservations
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_confirm(p_account text, p_reservation uuid, p_amount bigint, p_allow_overrun boolean, p_now timestamp with time zone, p_lock_timeout_ms integer, p_quantity bigint DEFAULT NULL::bigint)
 RETURNS SETOF reservations
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_release(p_account text, p_reservation uuid, p_reason text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF reservations
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_grant(p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_source smallint, p_external_ref text, p_expires_at timestamp with time zone, p_priority integer, p_description text, p_metadata jsonb, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF grants
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_revoke(p_caller text, p_key text, p_hash bytea, p_account text, p_grant uuid, p_external_ref text, p_amount bigint, p_series text, p_withdraw boolean, p_reason text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(out_grant grants, out_revoked bigint, out_unrecovered bigint, out_restored bigint, out_cancelled bigint)
 LANGUAGE plpgsql
AS $function$
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
  INSERT INTO revocation_claims AS c (grant_id, claim_key, account_id, claimed_amount, withdrawn)
  VALUES (v_grant, v_claim_key, v_account,
          CASE WHEN p_withdraw THEN 0
               WHEN p_amount = 0 THEN g.original_amount
               ELSE least(p_amount, g.original_amount) END,
          p_withdraw)
  ON CONFLICT (grant_id, claim_key) DO UPDATE
    SET claimed_amount = greatest(c.claimed_amount, EXCLUDED.claimed_amount),
        withdrawn = c.withdrawn OR EXCLUDED.withdrawn
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
                           cumulative_series, series_total, withdraw, reason, created_at)
  VALUES (v_id, v_grant, v_account, v_asked, v_revoked, v_asked - v_revoked, v_restored,
          v_cancelled, p_series, v_series_total, p_withdraw, p_reason, p_now);
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_transfer(p_caller text, p_key text, p_hash bytea, p_from text, p_to text, p_amount bigint, p_description text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(out_transfer_id uuid, out_from_account_id text, out_to_account_id text, out_amount bigint, out_description text, out_created_at timestamp with time zone, out_source_grant_id uuid, out_destination_grant_id uuid, out_lot_amount bigint, out_expires_at timestamp with time zone, out_priority integer)
 LANGUAGE plpgsql
AS $function$
DECLARE
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
  IF coalesce((SELECT frozen FROM accounts WHERE account_id = p_from), false) THEN
    RAISE EXCEPTION 'account frozen' USING ERRCODE = 'CR012';
  END IF;
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_settings_json(a accounts)
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE
AS $function$
  SELECT jsonb_strip_nulls(jsonb_build_object(
    'frozen', a.frozen, 'overdraft_limit', a.overdraft_limit,
    'spend_limit_day', a.spend_limit_day, 'spend_limit_month', a.spend_limit_month,
    'spend_limit_rolling', a.spend_limit_rolling,
    'spend_limit_rolling_hours', a.spend_limit_rolling_hours,
    'balance_alert_thresholds', to_jsonb(a.balance_alert_thresholds)))
$function$;

CREATE OR REPLACE FUNCTION public.credits_update_account_settings(p_caller text, p_account text, p_settings jsonb, p_mask text[], p_reason text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(out_account accounts, out_spend jsonb)
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_read_events(p_after_position bigint, p_after_seq bigint, p_account text, p_types text[], p_limit integer)
 RETURNS TABLE(out_event ledger_events, out_horizon bigint)
 LANGUAGE plpgsql
AS $function$
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
END $function$;
REVOKE ALL ON FUNCTION credits_read_events(bigint,bigint,text,text[],integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_read_events(bigint,bigint,text,text[],integer) TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_sweep_events(p_cutoff timestamp with time zone, p_limit integer)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
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
END $function$;
REVOKE ALL ON FUNCTION credits_sweep_events(timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_sweep_events(timestamp with time zone,integer) TO credits_service;
