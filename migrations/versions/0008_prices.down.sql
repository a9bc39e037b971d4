-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
DROP FUNCTION credits_price_at(text,timestamp with time zone);

DROP FUNCTION credits_reserve(text,text,bytea,text,bigint,interval,text,text,text,jsonb,timestamp with time zone,integer,bigint,bigint);

DROP FUNCTION credits_confirm(text,uuid,bigint,boolean,timestamp with time zone,integer,bigint);

DROP FUNCTION credits_set_price(text,text,bigint,text,timestamp with time zone,text,timestamp with time zone);

DROP FUNCTION credits_list_prices(timestamp with time zone,integer,bigint);

DROP FUNCTION credits_price_history(text,integer,bigint);

CREATE OR REPLACE FUNCTION public.credits_reserve(p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_ttl interval, p_job_id text, p_job_type text, p_description text, p_metadata jsonb, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF reservations
 LANGUAGE plpgsql
AS $function$
DECLARE
  a accounts;
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
  -- After the replay: a hold taken before the freeze (or a limit) is still answered as
  -- it was. Then in the documented order: frozen, the spend limits, the balance.
  SELECT * INTO a FROM accounts WHERE account_id = p_account;
  IF a.frozen THEN
    RAISE EXCEPTION 'account frozen' USING ERRCODE = 'CR012';
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
REVOKE ALL ON FUNCTION credits_reserve(text,text,bytea,text,bigint,interval,text,text,text,jsonb,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_reserve(text,text,bytea,text,bigint,interval,text,text,text,jsonb,timestamp with time zone,integer) TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_confirm(p_account text, p_reservation uuid, p_amount bigint, p_allow_overrun boolean, p_now timestamp with time zone, p_lock_timeout_ms integer)
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
  RETURN NEXT r;
END $function$;
REVOKE ALL ON FUNCTION credits_confirm(text,uuid,bigint,boolean,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_confirm(text,uuid,bigint,boolean,timestamp with time zone,integer) TO credits_service;
