-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
DROP FUNCTION credits_revoke(text,text,bytea,text,uuid,text,bigint,text,boolean,timestamp with time zone,text,timestamp with time zone,integer);

CREATE OR REPLACE FUNCTION public.credits_revoke(p_caller text, p_key text, p_hash bytea, p_account text, p_grant uuid, p_external_ref text, p_amount bigint, p_series text, p_withdraw boolean, p_reason text, p_now timestamp with time zone, p_lock_timeout_ms integer)
 RETURNS TABLE(out_grant grants, out_revoked bigint, out_unrecovered bigint, out_restored bigint, out_cancelled bigint)
 LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
  v_grant uuid;
  v_account text;
  v_id uuid;
  g grants;
  v_claim_key text;
  v_series_total bigint;
  v_target bigint;
  v_owed bigint;
  v_asked bigint := 0;
  v_revoked bigint := 0;
  v_cancelled bigint := 0;
  v_restored bigint := 0;
  v_expire bigint := 0;
BEGIN
  IF p_grant IS NOT NULL THEN
    SELECT gr.grant_id, gr.account_id INTO v_grant, v_account
      FROM grants gr WHERE gr.grant_id = p_grant;
  ELSE
    SELECT gr.grant_id, gr.account_id INTO v_grant, v_account
      FROM grants gr WHERE gr.external_ref = p_external_ref;
  END IF;
  IF v_grant IS NULL OR (p_account <> '' AND v_account <> p_account) THEN
    RAISE EXCEPTION 'grant not found' USING ERRCODE = 'CR005';
  END IF;
  PERFORM credits_lock(v_account, p_now, p_lock_timeout_ms);
  v_id := credits_replayed(p_caller, p_key, 'revoke', p_hash);
  IF v_id IS NOT NULL THEN
    RETURN QUERY SELECT gr, rv.revoked_amount, rv.unrecovered_amount, rv.restored_amount,
                        rv.cancelled_amount
                   FROM revocations rv JOIN grants gr ON gr.grant_id = rv.grant_id
                  WHERE rv.revocation_id = v_id;
    RETURN;
  END IF;

  SELECT * INTO g FROM grants gr WHERE gr.grant_id = v_grant;
  v_id := gen_random_uuid();
  v_claim_key := CASE WHEN p_series IS NULL THEN 'call:' || v_id ELSE 'series:' || p_series END;
  INSERT INTO revocation_claims AS c (grant_id, claim_key, account_id, claimed_amount, withdrawn)
  VALUES (v_grant, v_claim_key, v_account,
          CASE WHEN p_withdraw THEN 0
               WHEN p_amount = 0 THEN g.original_amount
               ELSE least(p_amount, g.original_amount) END,
          p_withdraw)
  ON CONFLICT (grant_id, claim_key) DO UPDATE
    SET claimed_amount = greatest(c.claimed_amount, EXCLUDED.claimed_amount),
        withdrawn = c.withdrawn OR EXCLUDED.withdrawn
  RETURNING CASE WHEN p_series IS NULL THEN NULL ELSE c.claimed_amount END
    INTO v_series_total;

  SELECT least(coalesce(sum(c.claimed_amount), 0), g.original_amount) INTO v_target
    FROM revocation_claims c WHERE c.grant_id = v_grant AND NOT c.withdrawn;
  v_owed := g.revoked_amount + g.unrecovered_amount;
  IF v_target > v_owed THEN
    -- Expired credits are gone already: they can be neither taken nor owed.
    v_asked := greatest(least(v_target, g.original_amount - g.expired_amount) - v_owed, 0);
    v_revoked := least(v_asked, g.remaining_amount);
  ELSIF v_target < v_owed THEN
    v_cancelled := least(v_owed - v_target, g.unrecovered_amount);
    v_restored := v_owed - v_target - v_cancelled;
    v_expire := CASE WHEN g.expires_at <= p_now THEN v_restored ELSE 0 END;
  END IF;

  INSERT INTO revocations (revocation_id, grant_id, account_id, requested_amount, revoked_amount,
                           unrecovered_amount, restored_amount, cancelled_amount,
                           cumulative_series, series_total, withdraw, reason, created_at)
  VALUES (v_id, v_grant, v_account, v_asked, v_revoked, v_asked - v_revoked, v_restored,
          v_cancelled, p_series, v_series_total, p_withdraw, p_reason, p_now);
  UPDATE grants gr
     SET remaining_amount = gr.remaining_amount - v_revoked + v_restored - v_expire,
         revoked_amount = gr.revoked_amount + v_revoked - v_restored,
         unrecovered_amount = gr.unrecovered_amount + (v_asked - v_revoked) - v_cancelled,
         expired_amount = gr.expired_amount + v_expire
   WHERE gr.grant_id = v_grant;
  IF v_revoked > 0 THEN
    INSERT INTO ledger_entries (account_id, grant_id, revocation_id, kind, amount, created_at)
    VALUES (v_account, v_grant, v_id, 'revoke', -v_revoked, p_now);
  END IF;
  IF v_restored > 0 THEN
    INSERT INTO ledger_entries (account_id, grant_id, revocation_id, kind, amount, created_at)
    VALUES (v_account, v_grant, v_id, 'revoke_reversal', v_restored, p_now);
  END IF;
  IF v_expire > 0 THEN
    INSERT INTO ledger_entries (account_id, grant_id, revocation_id, kind, amount, created_at)
    VALUES (v_account, v_grant, v_id, 'grant_expiry', -v_expire, p_now);
  END IF;
  PERFORM credits_remember(p_caller, p_key, 'revoke', p_hash, v_account, v_id, p_now);
  -- A call that changed nothing (its claim was already counted) is no event.
  IF v_asked > 0 THEN
    PERFORM credits_emit('revoked', v_account, p_now, p_caller, v_grant, NULL, v_id, v_revoked,
                         0, v_asked - v_revoked);
  ELSIF v_restored + v_cancelled > 0 THEN
    PERFORM credits_emit('revocation_withdrawn', v_account, p_now, p_caller, v_grant, NULL, v_id,
                         v_restored, 0, v_cancelled);
  END IF;
  RETURN QUERY SELECT gr, v_revoked, v_asked - v_revoked, v_restored, v_cancelled
                 FROM grants gr WHERE gr.grant_id = v_grant;
END $function$;
REVOKE ALL ON FUNCTION credits_revoke(text,text,bytea,text,uuid,text,bigint,text,boolean,text,timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION credits_revoke(text,text,bytea,text,uuid,text,bigint,text,boolean,text,timestamp with time zone,integer) TO credits_service;
