"""Revocations as claims (withdrawable by series), time as a parameter of every ledger
function, balances and usage read through the same settlement as writes.

Applies the snapshot 0002_ledger_functions.sql of service/store/sql/ledger.sql. Every function
changes its signature (p_now), so the old ones are dropped first.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 06:10:00
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.util import await_only

FUNCTIONS_SQL = Path(__file__).with_name("0002_ledger_functions.sql")
# Signatures as 0001 created them.
FUNCTIONS_0001 = (
    "credits_return(uuid, bigint, text, timestamptz)",
    "credits_settle(text, timestamptz)",
    "credits_lock(text, timestamptz, integer)",
    "credits_replayed(text, text, text, bytea)",
    "credits_remember(text, text, text, bytea, text, uuid)",
    "credits_reserve(text, text, bytea, text, bigint, interval, text, text, text, jsonb, integer)",
    "credits_locked_reservation(text, uuid, timestamptz, integer)",
    "credits_confirm(text, uuid, bigint, integer)",
    "credits_release(text, uuid, text, integer)",
    (
        "credits_grant(text, text, bytea, text, bigint, smallint, text, timestamptz, integer, text,"
        " jsonb, integer)"
    ),
    "credits_revoke(text, text, bytea, text, uuid, text, bigint, text, text, integer)",
    "credits_due_accounts(timestamptz, integer)",
)
KINDS_0001 = (
    "kind IN ('grant', 'reserve', 'release', 'confirm_return', 'reservation_expiry',"
    " 'grant_expiry', 'revoke')"
)
KINDS_0002 = (
    "kind IN ('grant', 'reserve', 'release', 'confirm_return', 'reservation_expiry',"
    " 'grant_expiry', 'revoke', 'revoke_reversal')"
)
# The service's role may call every ledger function but the trigger's.
GRANT_EXECUTE = """
DO $$
DECLARE f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'credits\\_%'
              AND p.proname <> 'credits_refuse_change'
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO credits_service', f);
  END LOOP;
END $$"""
revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revocation_claims",
        sa.Column("grant_id", sa.UUID(), nullable=False),
        sa.Column("claim_key", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("claimed_amount", sa.BigInteger(), nullable=False),
        sa.Column("withdrawn", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.CheckConstraint(
            "claimed_amount >= 0", name=op.f("ck_revocation_claims_claimed_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["grants.grant_id"], name=op.f("fk_revocation_claims_grant_id_grants")
        ),
        sa.PrimaryKeyConstraint("grant_id", "claim_key", name=op.f("pk_revocation_claims")),
    )
    op.add_column(
        "revocations",
        sa.Column("restored_amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "revocations",
        sa.Column("cancelled_amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "revocations",
        sa.Column("withdraw", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_revocations_given_back_non_negative"),
        "revocations",
        "restored_amount >= 0 AND cancelled_amount >= 0",
    )
    op.drop_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", type_="check")
    op.create_check_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", KINDS_0002)
    # What 0001's revocations asked for becomes their claims: a series claims its highest
    # total, a call without one what it asked.
    op.execute("""
        INSERT INTO revocation_claims (grant_id, claim_key, account_id, claimed_amount)
        SELECT grant_id, 'series:' || cumulative_series, min(account_id), max(series_total)
          FROM revocations WHERE cumulative_series IS NOT NULL GROUP BY 1, 2
        UNION ALL
        SELECT grant_id, 'call:' || revocation_id, account_id, requested_amount
          FROM revocations WHERE cumulative_series IS NULL""")
    for function in FUNCTIONS_0001:
        op.execute(f"DROP FUNCTION {function}")
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(FUNCTIONS_SQL.read_text()))
    op.execute("GRANT SELECT, INSERT, UPDATE ON revocation_claims TO credits_service")
    op.execute(GRANT_EXECUTE)


def downgrade() -> None:
    op.execute("REVOKE ALL ON revocation_claims FROM credits_service")
    op.execute("""
        DO $$
        DECLARE f regprocedure;
        BEGIN
          FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
                    WHERE p.pronamespace = 'public'::regnamespace
                      AND p.proname LIKE 'credits\\_%' AND p.proname <> 'credits_refuse_change'
          LOOP
            EXECUTE format('DROP FUNCTION %s', f);
          END LOOP;
        END $$""")
    sql_0001 = Path(__file__).with_name("0001_ledger_functions.sql").read_text()
    # 0001's file creates the trigger function and triggers too; they still exist.
    functions_only = sql_0001.split("CREATE FUNCTION credits_refuse_change()")[0]
    await_only(op.get_bind().connection.driver_connection.execute(functions_only))
    for function in FUNCTIONS_0001:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO credits_service")
    # The ledger is append-only: a database that has used the new kind cannot go back.
    op.execute("""
        DO $$ BEGIN
          IF EXISTS (SELECT FROM ledger_entries WHERE kind = 'revoke_reversal') THEN
            RAISE EXCEPTION 'ledger entries of kind revoke_reversal exist: cannot downgrade';
          END IF;
        END $$""")
    op.drop_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", type_="check")
    op.create_check_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", KINDS_0001)
    op.drop_constraint(op.f("ck_revocations_given_back_non_negative"), "revocations", type_="check")
    op.drop_column("revocations", "withdraw")
    op.drop_column("revocations", "cancelled_amount")
    op.drop_column("revocations", "restored_amount")
    op.drop_table("revocation_claims")
