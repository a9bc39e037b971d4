"""A cumulative series' claim ordered by the time of the fact it states
(RevokeRequest.as_of): the latest stands, up or down.

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from 0013's, and nothing else:
- credits_revoke (new)
- credits_revoke (removed)

By hand, before the functions: the nullable as_of column of revocation_claims (the time
of the fact a series' standing claim stated) and of revocations (the audit trail).

Upgrade: 0014_revocation_as_of.sql; downgrade: 0014_revocation_as_of.down.sql.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 21:56:06
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


# NULL: claims and revocations stored before this revision, and calls without as_of.
AS_OF_TABLES = ("revocation_claims", "revocations")


def upgrade() -> None:
    for table in AS_OF_TABLES:
        op.add_column(table, sa.Column("as_of", postgresql.TIMESTAMP(timezone=True), nullable=True))
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
    # The claim rule before this revision is the highest: a claim lowered by a newer
    # as_of stays as it is (its credits were given back), only its time is dropped.
    for table in AS_OF_TABLES:
        op.drop_column(table, "as_of")
