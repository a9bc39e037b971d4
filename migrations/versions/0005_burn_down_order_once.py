"""Ledger functions: the burn-down order written once (credits_burn_order), which
credits_reserve and credits_list_grants use.

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from 0004's, and nothing else:
- credits_burn_order (new)
- credits_list_grants (changed)
- credits_reserve (changed)

Upgrade: 0005_burn_down_order_once.sql; downgrade: 0005_burn_down_order_once.down.sql.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 07:54:31
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


def upgrade() -> None:
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
