"""Price changes on the event stream: SetPrice writes a price_set or price_retired event,
which belongs to no account, in its transaction, one job type at a time.

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from 0011's, and nothing else:
- credits_set_price (new: with p_lock_timeout_ms)
- credits_set_price (removed: the signature without it)

By hand, before the functions: ledger_events' account_id becomes NULL-able (price events
belong to no account, check account_unless_price), the price columns, the two new event
types, and the partial index of a job type's latest price event.

Upgrade: 0012_price_events.sql; downgrade: 0012_price_events.down.sql.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 12:40:02
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


EVENT_TYPES_BEFORE = (
    "event_type IN ('granted', 'reserved', 'confirmed', 'released',"
    " 'reservation_expired', 'grant_expired', 'revoked', 'revocation_withdrawn',"
    " 'account_settings_changed', 'balance_low', 'balance_depleted',"
    " 'balance_recovered', 'transfer_sent')"
)
PRICE_COLUMNS = (
    ("job_type", sa.Text()),
    ("price_version", sa.BigInteger()),
    ("unit_price", sa.BigInteger()),
    ("unit", sa.Text()),
    ("effective_at", postgresql.TIMESTAMP(timezone=True)),
    ("reason", sa.Text()),
)


def upgrade() -> None:
    op.alter_column("ledger_events", "account_id", nullable=True)
    for name, kind in PRICE_COLUMNS:
        op.add_column("ledger_events", sa.Column(name, kind, nullable=True))
    op.drop_constraint(op.f("ck_ledger_events_event_type_known"), "ledger_events", type_="check")
    op.create_check_constraint(
        op.f("ck_ledger_events_event_type_known"),
        "ledger_events",
        "event_type IN ('granted', 'reserved', 'confirmed', 'released',"
        " 'reservation_expired', 'grant_expired', 'revoked', 'revocation_withdrawn',"
        " 'account_settings_changed', 'balance_low', 'balance_depleted',"
        " 'balance_recovered', 'transfer_sent', 'price_set', 'price_retired')",
    )
    op.create_check_constraint(
        op.f("ck_ledger_events_account_unless_price"),
        "ledger_events",
        "(account_id IS NULL) = (event_type IN ('price_set', 'price_retired'))",
    )
    op.create_check_constraint(
        op.f("ck_ledger_events_price_of_price_events"),
        "ledger_events",
        "(job_type IS NOT NULL AND price_version IS NOT NULL AND unit IS NOT NULL"
        " AND effective_at IS NOT NULL AND reason IS NOT NULL)"
        " = (event_type IN ('price_set', 'price_retired'))"
        " AND (unit_price IS NOT NULL) = (event_type = 'price_set')",
    )
    op.create_index(
        "ix_ledger_events_job_type",
        "ledger_events",
        ["job_type", "stream_position"],
        postgresql_where=sa.text("job_type IS NOT NULL"),
    )
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
    # The outbox before this revision has no place for an event without an account.
    op.execute("DELETE FROM ledger_events WHERE account_id IS NULL")
    op.drop_index("ix_ledger_events_job_type", "ledger_events")
    op.drop_constraint(
        op.f("ck_ledger_events_price_of_price_events"), "ledger_events", type_="check"
    )
    op.drop_constraint(
        op.f("ck_ledger_events_account_unless_price"), "ledger_events", type_="check"
    )
    op.drop_constraint(op.f("ck_ledger_events_event_type_known"), "ledger_events", type_="check")
    op.create_check_constraint(
        op.f("ck_ledger_events_event_type_known"), "ledger_events", EVENT_TYPES_BEFORE
    )
    for name, _ in PRICE_COLUMNS:
        op.drop_column("ledger_events", name)
    op.alter_column("ledger_events", "account_id", nullable=False)
