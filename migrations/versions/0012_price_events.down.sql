-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
DROP FUNCTION credits_set_price(text,text,bigint,text,timestamp with time zone,text,timestamp with time zone,integer);

CREATE OR REPLACE FUNCTION public.credits_set_price(p_caller text, p_job_type text, p_unit_price bigint, p_unit text, p_effective_at timestamp with time zone, p_reason text, p_now timestamp with time zone)
 RETURNS SETOF prices
 LANGUAGE sql
AS $function$
  INSERT INTO prices (job_type, unit_price, unit, effective_at, set_at, set_by, reason)
  VALUES (p_job_type, p_unit_price, p_unit, p_effective_at, p_now, p_caller, p_reason)
  RETURNING *
$function$;
REVOKE ALL ON FUNCTION credits_set_price(text,text,bigint,text,timestamp with time zone,text,timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_set_price(text,text,bigint,text,timestamp with time zone,text,timestamp with time zone) TO credits_service;
