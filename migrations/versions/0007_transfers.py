"""Transfers between accounts: the transfers and transfer_lots tables, the transfer id on
ledger entries, credits_transfer and the check that each transfer balances.

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from 0006's, and nothing else:
- credits_check_transfer (new)
- credits_list_entries (changed)
- credits_source_transfer (new)
- credits_transfer (new)
- credits_transfer_result (new)

Upgrade: 0007_transfers.sql; downgrade: 0007_transfers.down.sql.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 08:26:29
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


TRANSFER_KINDS = "'transfer_out', 'transfer_in'"
KINDS_BEFORE = (
    "'grant', 'reserve', 'release', 'confirm_return', 'reservation_expiry',"
    " 'grant_expiry', 'revoke', 'revoke_reversal', 'overrun', 'debt_repayment'"
)


def upgrade() -> None:
    op.drop_constraint(op.f("ck_grants_source_known"), "grants")
    op.create_check_constraint(op.f("ck_grants_source_known"), "grants", "source BETWEEN 1 AND 5")
    op.create_table(
        "transfers",
        sa.Column("transfer_id", sa.UUID(), nullable=False),
        sa.Column("from_account_id", sa.Text(), nullable=False),
        sa.Column("to_account_id", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transfers_amount_positive")),
        sa.CheckConstraint(
            "from_account_id <> to_account_id", name=op.f("ck_transfers_two_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["from_account_id"],
            ["accounts.account_id"],
            name=op.f("fk_transfers_from_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["to_account_id"],
            ["accounts.account_id"],
            name=op.f("fk_transfers_to_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("transfer_id", name=op.f("pk_transfers")),
    )
    op.create_index(op.f("ix_transfers_from_account_id"), "transfers", ["from_account_id"])
    op.create_index(op.f("ix_transfers_to_account_id"), "transfers", ["to_account_id"])
    op.create_table(
        "transfer_lots",
        sa.Column("transfer_id", sa.UUID(), nullable=False),
        sa.Column("burn_rank", sa.Integer(), nullable=False),
        sa.Column("source_grant_id", sa.UUID(), nullable=False),
        sa.Column("destination_grant_id", sa.UUID(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transfer_lots_amount_positive")),
        sa.CheckConstraint(
            "source_grant_id <> destination_grant_id", name=op.f("ck_transfer_lots_two_grants")
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"],
            ["transfers.transfer_id"],
            name=op.f("fk_transfer_lots_transfer_id_transfers"),
        ),
        sa.ForeignKeyConstraint(
            ["source_grant_id"],
            ["grants.grant_id"],
            name=op.f("fk_transfer_lots_source_grant_id_grants"),
        ),
        sa.ForeignKeyConstraint(
            ["destination_grant_id"],
            ["grants.grant_id"],
            name=op.f("fk_transfer_lots_destination_grant_id_grants"),
        ),
        sa.PrimaryKeyConstraint("transfer_id", "source_grant_id", name=op.f("pk_transfer_lots")),
        sa.UniqueConstraint(
            "destination_grant_id", name=op.f("uq_transfer_lots_destination_grant_id")
        ),
    )
    op.add_column("ledger_entries", sa.Column("transfer_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        op.f("fk_ledger_entries_transfer_id_transfers"),
        "ledger_entries",
        "transfers",
        ["transfer_id"],
        ["transfer_id"],
    )
    op.create_index(
        op.f("ix_ledger_entries_transfer_id"),
        "ledger_entries",
        ["transfer_id"],
        postgresql_where=sa.text("transfer_id IS NOT NULL"),
    )
    op.drop_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries")
    op.create_check_constraint(
        op.f("ck_ledger_entries_kind_known"),
        "ledger_entries",
        f"kind IN ({KINDS_BEFORE}, {TRANSFER_KINDS})",
    )
    op.create_check_constraint(
        op.f("ck_ledger_entries_transfer_entry_has_transfer"),
        "ledger_entries",
        f"(kind IN ({TRANSFER_KINDS})) = (transfer_id IS NOT NULL)",
    )
    op.create_check_constraint(
        op.f("ck_ledger_entries_transfer_entry_sign"),
        "ledger_entries",
        "(kind <> 'transfer_out' OR amount < 0) AND (kind <> 'transfer_in' OR amount > 0)",
    )
    # Like the ledger, transfers are append-only for the service's role.
    op.execute("GRANT SELECT, INSERT ON transfers, transfer_lots TO credits_service")
    _execute_script(UPGRADE_SQL)
    op.execute(
        "CREATE CONSTRAINT TRIGGER transfers_balanced AFTER INSERT ON transfers"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION credits_check_transfer()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER transfers_balanced ON transfers")
    _execute_script(DOWNGRADE_SQL)
    op.drop_constraint(op.f("ck_ledger_entries_transfer_entry_sign"), "ledger_entries")
    op.drop_constraint(op.f("ck_ledger_entries_transfer_entry_has_transfer"), "ledger_entries")
    op.drop_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries")
    op.create_check_constraint(
        op.f("ck_ledger_entries_kind_known"), "ledger_entries", f"kind IN ({KINDS_BEFORE})"
    )
    op.drop_index(op.f("ix_ledger_entries_transfer_id"), "ledger_entries")
    op.drop_constraint(op.f("fk_ledger_entries_transfer_id_transfers"), "ledger_entries")
    op.drop_column("ledger_entries", "transfer_id")
    op.drop_table("transfer_lots")
    op.drop_table("transfers")
    op.drop_constraint(op.f("ck_grants_source_known"), "grants")
    op.create_check_constraint(op.f("ck_grants_source_known"), "grants", "source BETWEEN 1 AND 4")
