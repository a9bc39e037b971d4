"""The service's role may read how far the outbox's sequence has gone, which the
credits_events_written_total metric samples (service/store/sampling.py).

Written by hand: a grant, no ledger function changed.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 12:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SELECT reads the sequence's last value and nothing else (USAGE would also let the role
# take values of its own with nextval).
GRANT = "GRANT SELECT ON SEQUENCE ledger_events_seq_seq TO credits_service"
REVOKE = "REVOKE SELECT ON SEQUENCE ledger_events_seq_seq FROM credits_service"


def upgrade() -> None:
    op.execute(GRANT)


def downgrade() -> None:
    op.execute(REVOKE)
