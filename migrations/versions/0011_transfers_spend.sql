-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
CREATE OR REPLACE FUNCTION public.credits_spent_since(p_account text, p_since timestamp with time zone)
 RETURNS TABLE(spent bigint, first_at timestamp with time zone)
 LANGUAGE sql
 STABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.credits_spend(a accounts, p_now timestamp with time zone)
 RETURNS TABLE(limit_name text, limit_amount bigint, used bigint, resets_at timestamp with time zone)
 LANGUAGE plpgsql
 STABLE
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_transfer(p_caller text, p_key text, p_hash bytea, p_from text, p_to text, p_amount bigint, p_description text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(out_transfer_id uuid, out_from_account_id text, out_to_account_id text, out_amount bigint, out_description text, out_created_at timestamp with time zone, out_source_grant_id uuid, out_destination_grant_id uuid, out_lot_amount bigint, out_expires_at timestamp with time zone, out_priority integer)
 LANGUAGE plpgsql
AS $function$
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
END $function$;
