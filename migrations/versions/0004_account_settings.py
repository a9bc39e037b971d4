"""Account settings: the settings columns on accounts (frozen first), their append-only
audit trail, and the functions that read and change them.

Applies 0004_account_settings.sql: only the functions of service/store/sql/ledger.sql this
change touched (docs/architecture.md, "Changing a rule").

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 08:00:00
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.util import await_only

FUNCTIONS_SQL = Path(__file__).with_name("0004_account_settings.sql")
NEW_FUNCTIONS = (
    "credits_settings_json(accounts)",
    "credits_get_account(text, timestamptz, integer)",
    "credits_update_account_settings(text, text, jsonb, text[], text, timestamptz, integer)",
)
revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("frozen", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "accounts",
        sa.Column("settings_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "accounts",
        sa.Column("settings_updated_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
    )
    op.add_column("accounts", sa.Column("settings_updated_by", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_accounts_settings_version_non_negative"), "accounts", "settings_version >= 0"
    )
    op.create_check_constraint(
        op.f("ck_accounts_settings_audit_complete"),
        "accounts",
        "(settings_version = 0) = (settings_updated_at IS NULL AND settings_updated_by IS NULL)",
    )
    op.create_table(
        "account_settings_changes",
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("changed_by", sa.Text(), nullable=False),
        sa.Column("update_mask", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("reason", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.CheckConstraint(
            "version > 0", name=op.f("ck_account_settings_changes_version_positive")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name=op.f("fk_account_settings_changes_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("account_id", "version", name=op.f("pk_account_settings_changes")),
    )
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(FUNCTIONS_SQL.read_text()))
    # Like the ledger: the service's role may add to the audit trail and read it, no more.
    op.execute("GRANT SELECT, INSERT ON account_settings_changes TO credits_service")
    for function in NEW_FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO credits_service")


def downgrade() -> None:
    for function in NEW_FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    op.drop_table("account_settings_changes")
    op.drop_constraint(op.f("ck_accounts_settings_audit_complete"), "accounts")
    op.drop_constraint(op.f("ck_accounts_settings_version_non_negative"), "accounts")
    for column in ("settings_updated_by", "settings_updated_at", "settings_version", "frozen"):
        op.drop_column("accounts", column)
    # The 0003 versions of the two functions this migration replaced.
    await_only(
        op.get_bind().connection.driver_connection.execute(
            Path(__file__).with_name("0003_ledger_functions.sql").read_text()
        )
    )
