"""Reads operators need and the heartbeat of long jobs: an account's grants with what is
held of them, its statement with running balances, one reservation with its
allocations, and extending an active reservation within a lifetime cap.

Applies the snapshot 0003_ledger_functions.sql of service/store/sql/ledger.sql. No existing
function changes its signature, so the snapshot replaces them in place and adds the new
ones.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 16:40:00
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op
from sqlalchemy.util import await_only

FUNCTIONS_SQL = Path(__file__).with_name("0003_ledger_functions.sql")
FUNCTIONS_SQL_0002 = Path(__file__).with_name("0002_ledger_functions.sql")
NEW_FUNCTIONS = (
    "credits_list_grants(text, boolean, integer, uuid, timestamptz, integer)",
    (
        "credits_list_entries(text, timestamptz, timestamptz, text[], integer, bigint,"
        " timestamptz, integer)"
    ),
    "credits_get_reservation(text, uuid, timestamptz, integer)",
    "credits_extend(text, uuid, interval, interval, timestamptz, integer)",
)
revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


def upgrade() -> None:
    _execute_script(FUNCTIONS_SQL)
    for function in NEW_FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO credits_service")


def downgrade() -> None:
    for function in NEW_FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    _execute_script(FUNCTIONS_SQL_0002)
