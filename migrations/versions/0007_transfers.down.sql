-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
DROP FUNCTION credits_source_transfer();

DROP FUNCTION credits_transfer_result(uuid);

DROP FUNCTION credits_transfer(text,text,bytea,text,text,bigint,text,timestamp with time zone,integer);

DROP FUNCTION credits_check_transfer();

DROP FUNCTION credits_list_entries(text,timestamp with time zone,timestamp with time zone,text[],integer,bigint,timestamp with time zone,integer);

CREATE OR REPLACE FUNCTION public.credits_list_entries(p_account text, p_since timestamp with time zone, p_until timestamp with time zone, p_kinds text[], p_limit integer, p_after bigint, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(entry_id bigint, kind text, amount bigint, grant_id uuid, reservation_id uuid, revocation_id uuid, created_at timestamp with time zone, balance_after bigint)
 LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  RETURN QUERY
    SELECT s.entry_id, s.kind, s.amount, s.grant_id, s.reservation_id, s.revocation_id,
           s.created_at, s.balance_after
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
