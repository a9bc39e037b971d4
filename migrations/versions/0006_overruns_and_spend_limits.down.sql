-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
DROP FUNCTION credits_spent_since(text,timestamp with time zone);

DROP FUNCTION credits_spend(accounts,timestamp with time zone);

DROP FUNCTION credits_check_spend(accounts,bigint,timestamp with time zone);

DROP FUNCTION credits_spend_json(accounts,timestamp with time zone);

DROP FUNCTION credits_confirm(text,uuid,bigint,boolean,timestamp with time zone,integer);

DROP FUNCTION credits_balance(text,timestamp with time zone,integer);

DROP FUNCTION credits_get_account(text,timestamp with time zone,integer);

DROP FUNCTION credits_update_account_settings(text,text,jsonb,text[],text,timestamp with time zone,integer);

CREATE OR REPLACE FUNCTION public.credits_reserve(p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_ttl interval, p_job_id text, p_job_type text, p_description text, p_metadata jsonb, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF reservations
 LANGUAGE plpgsql
AS $function$
DECLARE
  v_id uuid;
  v_grants uuid[];
  v_amounts bigint[];
  v_total bigint;
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  v_id := credits_replayed(p_caller, p_key, 'reserve', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT * FROM reservations WHERE reservation_id = v_id;
    RETURN;
  END IF;
  -- After the replay: a hold taken before the freeze is still answered as it was.
  IF (SELECT frozen FROM accounts WHERE account_id = p_account) THEN
    RAISE EXCEPTION 'account frozen' USING ERRCODE = 'CR012';
  END IF;

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
                            metadata, created_at, expires_at)
  VALUES (v_id, p_account, p_amount, p_job_id, p_job_type, p_description, p_metadata,
          p_now, p_now + p_ttl);
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
  RETURN QUERY SELECT * FROM reservations WHERE reservation_id = v_id;
END $function$;

CREATE OR REPLACE FUNCTION public.credits_confirm(p_account text, p_reservation uuid, p_amount bigint, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF reservations
 LANGUAGE plpgsql
AS $function$
DECLARE
  r reservations;
  v_capture bigint;
BEGIN
  r := credits_locked_reservation(p_account, p_reservation, p_now, p_lock_timeout_ms);
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
    RAISE EXCEPTION 'capture exceeds the reservation' USING ERRCODE = 'CR006';
  END IF;
  IF v_capture < r.amount THEN
    PERFORM credits_return(p_reservation, r.amount - v_capture, 'confirm_return', p_now);
  END IF;
  UPDATE reservations
     SET status = credits_status_confirmed(), confirmed_amount = v_capture,
         returned_amount = amount - v_capture, settled_at = p_now
   WHERE reservation_id = p_reservation
  RETURNING * INTO r;
  RETURN NEXT r;
END $function$;
REVOKE ALL ON FUNCTION credits_confirm(text,uuid,bigint,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_confirm(text,uuid,bigint,timestamp with time zone,integer) TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_grant(p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_source smallint, p_external_ref text, p_expires_at timestamp with time zone, p_priority integer, p_description text, p_metadata jsonb, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF grants
 LANGUAGE plpgsql
AS $function$
DECLARE
  v_id uuid;
  v_held numeric;
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
  v_id := gen_random_uuid();
  INSERT INTO grants (grant_id, account_id, source, original_amount, remaining_amount, priority,
                      external_ref, expires_at, description, metadata, created_at)
  VALUES (v_id, p_account, p_source, p_amount, p_amount, p_priority, p_external_ref,
          p_expires_at, p_description, p_metadata, p_now);
  INSERT INTO ledger_entries (account_id, grant_id, kind, amount, created_at)
  VALUES (p_account, v_id, 'grant', p_amount, p_now);
  PERFORM credits_remember(p_caller, p_key, 'grant', p_hash, p_account, v_id, p_now);
  RETURN QUERY SELECT * FROM grants WHERE grant_id = v_id;
END $function$;

CREATE OR REPLACE FUNCTION public.credits_balance(p_account text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(available bigint, reserved bigint, expiring_amount bigint, next_expiry timestamp with time zone)
 LANGUAGE plpgsql
AS $function$
BEGIN
  IF NOT credits_lock(p_account, p_now, p_lock_timeout_ms) THEN
    RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, NULL::timestamptz;
    RETURN;
  END IF;
  RETURN QUERY
    SELECT coalesce(sum(g.remaining_amount), 0)::bigint,
           (SELECT coalesce(sum(r.amount), 0)::bigint FROM reservations r
             WHERE r.account_id = p_account AND r.status = credits_status_reserved()),
           coalesce(sum(g.remaining_amount) FILTER (WHERE g.expires_at IS NOT NULL), 0)::bigint,
           min(g.expires_at)
      FROM grants g
     WHERE g.account_id = p_account AND g.remaining_amount > 0;
END $function$;
REVOKE ALL ON FUNCTION credits_balance(text,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_balance(text,timestamp with time zone,integer) TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_settings_json(a accounts)
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE
AS $function$
  SELECT jsonb_build_object('frozen', a.frozen)
$function$;

CREATE OR REPLACE FUNCTION public.credits_get_account(p_account text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF accounts
 LANGUAGE plpgsql
AS $function$
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  RETURN QUERY SELECT * FROM accounts WHERE account_id = p_account;
END $function$;
REVOKE ALL ON FUNCTION credits_get_account(text,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_get_account(text,timestamp with time zone,integer) TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_update_account_settings(p_caller text, p_account text, p_settings jsonb, p_mask text[], p_reason text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF accounts
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
  IF credits_settings_json(a) IS DISTINCT FROM v_before THEN
    UPDATE accounts
       SET frozen = a.frozen, settings_version = settings_version + 1,
           settings_updated_at = p_now, settings_updated_by = p_caller
     WHERE account_id = p_account
    RETURNING * INTO a;
    INSERT INTO account_settings_changes (account_id, version, changed_at, changed_by,
                                          update_mask, before, after, reason)
    VALUES (p_account, a.settings_version, p_now, p_caller, p_mask, v_before,
            credits_settings_json(a), p_reason);
  END IF;
  RETURN NEXT a;
END $function$;
REVOKE ALL ON FUNCTION credits_update_account_settings(text,text,jsonb,text[],text,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_update_account_settings(text,text,jsonb,text[],text,timestamp with time zone,integer) TO credits_service;
