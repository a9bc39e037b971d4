"""Events and balance alerts: the outbox table ledger_events written by every ledger
change, its retention mark, the accounts' alert thresholds and alert state, the webhook
delivery state.

Schema here; the functions from 0010_events.sql, written by `python -m
scripts.sqlmigration` (docs/architecture.md, "Changing a rule"; "Events"):
- credits_confirm, credits_grant, credits_release, credits_reserve, credits_return,
  credits_revoke, credits_settle, credits_transfer, credits_update_account_settings
  (changed: each change writes its event), credits_settings_json (changed: the alert
  thresholds)
- credits_default_alert_thresholds, credits_emit, credits_insert_event,
  credits_read_events, credits_sweep_events (new)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 08:30:00
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


def upgrade() -> None:
    op.add_column(
        "accounts", sa.Column("balance_alert_thresholds", postgresql.ARRAY(sa.BigInteger()))
    )
    op.add_column("accounts", sa.Column("balance_alerts_below", postgresql.ARRAY(sa.BigInteger())))
    op.add_column(
        "accounts",
        sa.Column(
            "balance_depleted", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
    )
    op.create_table(
        "ledger_events",
        sa.Column("stream_position", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "event_id",
            sa.UUID(),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("occurred_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("caller", sa.Text(), nullable=True),
        sa.Column("grant_id", sa.UUID(), nullable=True),
        sa.Column("reservation_id", sa.UUID(), nullable=True),
        sa.Column("revocation_id", sa.UUID(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("returned_amount", sa.BigInteger(), nullable=False),
        sa.Column("unrecovered_amount", sa.BigInteger(), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=True),
        sa.Column("available_after", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "amount >= 0 AND returned_amount >= 0 AND unrecovered_amount >= 0"
            " AND available_after >= 0",
            name=op.f("ck_ledger_events_amounts_non_negative"),
        ),
        sa.CheckConstraint(
            "event_type IN ('granted', 'reserved', 'confirmed', 'released',"
            " 'reservation_expired', 'grant_expired', 'revoked', 'revocation_withdrawn',"
            " 'account_settings_changed', 'balance_low', 'balance_depleted',"
            " 'balance_recovered', 'transfer_sent')",
            name=op.f("ck_ledger_events_event_type_known"),
        ),
        sa.CheckConstraint(
            "(threshold IS NOT NULL) = (event_type IN ('balance_low', 'balance_recovered'))",
            name=op.f("ck_ledger_events_threshold_of_alerts"),
        ),
        sa.PrimaryKeyConstraint("stream_position", "seq", name=op.f("pk_ledger_events")),
    )
    op.create_index("uq_ledger_events_event_id", "ledger_events", ["event_id"], unique=True)
    op.create_index(
        "ix_ledger_events_account",
        "ledger_events",
        ["account_id", "stream_position", "seq"],
    )
    op.create_table(
        "event_retention",
        sa.Column("singleton", sa.Boolean(), nullable=False),
        sa.Column("deleted_through_position", sa.BigInteger(), nullable=False),
        sa.Column("deleted_through_seq", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("singleton", name=op.f("ck_event_retention_one_row")),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_event_retention")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("delivered_position", sa.BigInteger(), nullable=False),
        sa.Column("delivered_seq", sa.BigInteger(), nullable=False),
        sa.Column("failing_since", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", name=op.f("pk_webhook_deliveries")),
    )
    op.execute("GRANT SELECT, INSERT, UPDATE ON webhook_deliveries TO credits_service")
    # The outbox is not the ledger: the retention sweep deletes its old rows.
    op.execute("GRANT SELECT, INSERT, DELETE ON ledger_events TO credits_service")
    op.execute("GRANT SELECT, INSERT, UPDATE ON event_retention TO credits_service")
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
    op.drop_table("webhook_deliveries")
    op.drop_table("event_retention")
    op.drop_table("ledger_events")
    for column in ("balance_depleted", "balance_alerts_below", "balance_alert_thresholds"):
        op.drop_column("accounts", column)
