"""Transfers count as the source's spend: a Transfer that would pass a spend limit is
SPEND_LIMIT_EXCEEDED, and GetAccount's use of each limit includes what was transferred
out; a rolling limit resets the second after its oldest spend leaves the window

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from 0010's, and nothing else:
- credits_spend (changed)
- credits_spent_since (changed)
- credits_transfer (changed)

Upgrade: 0011_transfers_spend.sql; downgrade: 0011_transfers_spend.down.sql.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 12:40:15
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


def upgrade() -> None:
    # credits_spent_since sums a source's transfers in a spend period (service/store/
    # tables.py): this index carries what it adds up and serves every lookup the old one
    # on from_account_id alone did. A plain CREATE INDEX holds off writes to transfers
    # while it builds: on a large ledger, run this in a quiet hour.
    op.create_index(
        "ix_transfers_from_account_created",
        "transfers",
        ["from_account_id", "created_at"],
        postgresql_include=["amount"],
    )
    op.drop_index("ix_transfers_from_account_id", table_name="transfers")
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
    op.create_index("ix_transfers_from_account_id", "transfers", ["from_account_id"])
    op.drop_index("ix_transfers_from_account_created", table_name="transfers")
