-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
DROP FUNCTION credits_set_price(text,text,bigint,text,timestamp with time zone,text,timestamp with time zone);

CREATE OR REPLACE FUNCTION public.credits_set_price(p_caller text, p_job_type text, p_unit_price bigint, p_unit text, p_effective_at timestamp with time zone, p_reason text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS SETOF prices
 LANGUAGE plpgsql
AS $function$
DECLARE
  v_price prices;
BEGIN
  IF p_lock_timeout_ms IS NOT NULL THEN
    PERFORM set_config('lock_timeout', p_lock_timeout_ms::text, true);
  END IF;
  PERFORM pg_advisory_xact_lock(1, hashtext(p_job_type));
  INSERT INTO prices (job_type, unit_price, unit, effective_at, set_at, set_by, reason)
  VALUES (p_job_type, p_unit_price, p_unit, p_effective_at, p_now, p_caller, p_reason)
  RETURNING * INTO v_price;
  INSERT INTO ledger_events (stream_position, event_type, account_id, occurred_at, caller,
                             amount, returned_amount, unrecovered_amount, available_after,
                             job_type, price_version, unit_price, unit, effective_at, reason)
  SELECT greatest(pg_current_xact_id()::text::bigint, max(e.stream_position)),
         CASE WHEN v_price.unit_price IS NULL THEN 'price_retired' ELSE 'price_set' END,
         NULL, p_now, p_caller, 0, 0, 0, 0, v_price.job_type, v_price.version,
         v_price.unit_price, v_price.unit, v_price.effective_at, v_price.reason
    FROM ledger_events e WHERE e.job_type = p_job_type;
  RETURN NEXT v_price;
END $function$;
REVOKE ALL ON FUNCTION credits_set_price(text,text,bigint,text,timestamp with time zone,text,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_set_price(text,text,bigint,text,timestamp with time zone,text,timestamp with time zone,integer) TO credits_service;
