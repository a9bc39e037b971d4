-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
CREATE OR REPLACE FUNCTION public.credits_usage_summary(p_account text, p_since timestamp with time zone, p_until timestamp with time zone, p_limit integer)
 RETURNS TABLE(job_type text, confirmed bigint, released bigint, expired bigint, captured_amount bigint)
 LANGUAGE sql
 STABLE
AS $function$
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
$function$;
REVOKE ALL ON FUNCTION credits_usage_summary(text,timestamp with time zone,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_usage_summary(text,timestamp with time zone,timestamp with time zone,integer) TO credits_service;
