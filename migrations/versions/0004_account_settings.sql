-- Migration 0004: the functions of service/store/sql/ledger.sql that account settings
-- changed or added, and nothing else: credits_reserve refuses a frozen account;
-- credits_settings_json, credits_get_account and credits_update_account_settings are new;
-- credits_refuse_change names the table it guards.

CREATE OR REPLACE FUNCTION credits_reserve(
  p_caller text, p_key text, p_hash bytea, p_account text, p_amount bigint, p_ttl interval,
  p_job_id text, p_job_type text, p_description text, p_metadata jsonb, p_now timestamptz,
  p_lock_timeout_ms integer)
RETURNS SETOF reservations LANGUAGE plpgsql AS $$
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

  -- Burn-down order: lowest priority, then soonest expiry (never-expiring last), then
  -- oldest. Settling has already expired every grant past its expiry.
  WITH ranked AS (
    SELECT grant_id, remaining_amount,
           sum(remaining_amount) OVER w AS running, row_number() OVER w AS burn_rank
      FROM grants
     WHERE account_id = p_account AND remaining_amount > 0
    WINDOW w AS (ORDER BY priority, expires_at NULLS LAST, created_at, grant_id)
  )
  SELECT array_agg(grant_id ORDER BY burn_rank),
         array_agg(least(remaining_amount, p_amount - (running - remaining_amount))
                   ORDER BY burn_rank),
         sum(least(remaining_amount, p_amount - (running - remaining_amount)))
    INTO v_grants, v_amounts, v_total
    FROM ranked WHERE running - remaining_amount < p_amount;
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
END $$;

CREATE OR REPLACE FUNCTION credits_settings_json(a accounts) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('frozen', a.frozen)
$$;

CREATE OR REPLACE FUNCTION credits_get_account(p_account text, p_now timestamptz,
                                               p_lock_timeout_ms integer)
RETURNS SETOF accounts LANGUAGE plpgsql AS $$
BEGIN
  PERFORM credits_lock(p_account, p_now, p_lock_timeout_ms);
  RETURN QUERY SELECT * FROM accounts WHERE account_id = p_account;
END $$;

CREATE OR REPLACE FUNCTION credits_update_account_settings(
  p_caller text, p_account text, p_settings jsonb, p_mask text[], p_reason text,
  p_now timestamptz, p_lock_timeout_ms integer)
RETURNS SETOF accounts LANGUAGE plpgsql AS $$
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
END $$;

CREATE OR REPLACE FUNCTION credits_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END $$;

CREATE OR REPLACE TRIGGER account_settings_changes_append_only
  BEFORE UPDATE OR DELETE ON account_settings_changes
  FOR EACH ROW EXECUTE FUNCTION credits_refuse_change();
CREATE OR REPLACE TRIGGER account_settings_changes_no_truncate
  BEFORE TRUNCATE ON account_settings_changes
  FOR EACH STATEMENT EXECUTE FUNCTION credits_refuse_change();
