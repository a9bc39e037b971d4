"""GetUsageSummary: finished reservations per job type in a window, on indexes of
settled_at

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from 0008's, and nothing else:
- credits_usage_summary (new)

Upgrade: 0009_usage_summary.sql; downgrade: 0009_usage_summary.down.sql.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 08:33:37
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


def upgrade() -> None:
    # GetUsageSummary's windows (service/store/tables.py). A plain CREATE INDEX holds off
    # writes to reservations while it builds: on a large ledger, run this in a quiet hour.
    op.create_index(
        "ix_reservations_settled",
        "reservations",
        ["settled_at"],
        postgresql_where=sa.text("settled_at IS NOT NULL"),
    )
    op.create_index(
        "ix_reservations_account_settled",
        "reservations",
        ["account_id", "settled_at"],
        postgresql_where=sa.text("settled_at IS NOT NULL"),
    )
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
    op.drop_index("ix_reservations_account_settled", table_name="reservations")
    op.drop_index("ix_reservations_settled", table_name="reservations")
