-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
DROP FUNCTION credits_list_entries(text,timestamp with time zone,timestamp with time zone,text[],integer,bigint,timestamp with time zone,integer);

CREATE OR REPLACE FUNCTION public.credits_source_transfer()
 RETURNS smallint
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$ SELECT 5::smallint $function$;
REVOKE ALL ON FUNCTION credits_source_transfer() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_source_transfer() TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_transfer_result(p_transfer uuid)
 RETURNS TABLE(out_transfer_id uuid, out_from_account_id text, out_to_account_id text, out_amount bigint, out_description text, out_created_at timestamp with time zone, out_source_grant_id uuid, out_destination_grant_id uuid, out_lot_amount bigint, out_expires_at timestamp with time zone, out_priority integer)
 LANGUAGE plpgsql
 STABLE
AS $function$
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
END $function$;
REVOKE ALL ON FUNCTION credits_transfer_result(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_transfer_result(uuid) TO credits_service;

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
  END LOOP;
  PERFORM credits_remember(p_caller, p_key, 'transfer', p_hash, p_from, v_id, p_now);
  RETURN QUERY SELECT * FROM credits_transfer_result(v_id);
END $function$;
REVOKE ALL ON FUNCTION credits_transfer(text,text,bytea,text,text,bigint,text,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_transfer(text,text,bytea,text,text,bigint,text,timestamp with time zone,integer) TO credits_service;

CREATE OR REPLACE FUNCTION public.credits_check_transfer()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION public.credits_list_entries(p_account text, p_since timestamp with time zone, p_until timestamp with time zone, p_kinds text[], p_limit integer, p_after bigint, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(entry_id bigint, kind text, amount bigint, grant_id uuid, reservation_id uuid, revocation_id uuid, created_at timestamp with time zone, balance_after bigint, transfer_id uuid)
 LANGUAGE plpgsql
AS $function$
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
END $function$;
REVOKE ALL ON FUNCTION credits_list_entries(text,timestamp with time zone,timestamp with time zone,text[],integer,bigint,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_list_entries(text,timestamp with time zone,timestamp with time zone,text[],integer,bigint,timestamp with time zone,integer) TO credits_service;
