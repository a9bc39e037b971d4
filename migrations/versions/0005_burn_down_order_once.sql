-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
CREATE OR REPLACE FUNCTION public.credits_burn_order(p_account text, p_with_finished boolean)
 RETURNS TABLE(grant_id uuid, remaining_amount bigint, burn_rank bigint, running numeric)
 LANGUAGE sql
 STABLE
AS $function$
  SELECT g.grant_id, g.remaining_amount, row_number() OVER w, sum(g.remaining_amount) OVER w
    FROM grants g
   WHERE g.account_id = p_account AND (p_with_finished OR g.remaining_amount > 0)
  WINDOW w AS (ORDER BY g.priority, g.expires_at NULLS LAST, g.created_at, g.grant_id)
$function$;
REVOKE ALL ON FUNCTION credits_burn_order(text,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_burn_order(text,boolean) TO credits_service;

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

CREATE OR REPLACE FUNCTION public.credits_list_grants(p_account text, p_include_finished boolean, p_limit integer, p_after uuid, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(out_grant grants, out_held bigint)
 LANGUAGE plpgsql
AS $function$
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
END $function$;
