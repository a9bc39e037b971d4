"""Prices: a versioned, append-only price list per job type (SetPrice, ListPrices,
ListPriceHistory); Reserve and Confirm by quantity at a stored price version

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from 0007's, and nothing else:
- credits_confirm (changed: p_quantity)
- credits_list_prices (new)
- credits_price_at (new)
- credits_price_history (new)
- credits_reserve (changed: p_quantity, p_amount_max)
- credits_set_price (new)

Upgrade: 0008_prices.sql; downgrade: 0008_prices.down.sql. Written by hand: the
schema (the prices table, append-only by trigger, and the reservations' price columns),
created before the functions and dropped after them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 08:10:39
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


def upgrade() -> None:
    _create_price_tables()
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
    _drop_price_tables()


def _create_price_tables() -> None:
    op.create_table(
        "prices",
        sa.Column("version", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("job_type", sa.Text(), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=True),
        sa.Column("unit", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("effective_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("set_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("set_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.CheckConstraint(
            "job_type ~ '^[A-Za-z0-9._:@-]{1,128}$'", name=op.f("ck_prices_job_type_format")
        ),
        sa.CheckConstraint("unit_price > 0", name=op.f("ck_prices_unit_price_positive")),
        sa.CheckConstraint(
            "(unit_price IS NULL) = (unit = '')", name=op.f("ck_prices_unit_named_when_priced")
        ),
        sa.CheckConstraint("effective_at >= set_at", name=op.f("ck_prices_not_backdated")),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_prices")),
        sa.UniqueConstraint(
            "job_type", "version", "unit_price", name=op.f("uq_prices_job_type_version_unit_price")
        ),
    )
    op.create_index(
        "ix_prices_in_effect", "prices", ["job_type", "effective_at", "version"], unique=False
    )
    for column in ("price_version", "unit_price", "quantity"):
        op.add_column("reservations", sa.Column(column, sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        op.f("ck_reservations_priced_consistent"),
        "reservations",
        "(price_version IS NULL AND unit_price IS NULL AND quantity IS NULL)"
        " OR (price_version IS NOT NULL AND unit_price > 0 AND quantity > 0"
        " AND amount::numeric = unit_price::numeric * quantity)",
    )
    op.create_foreign_key(
        op.f("fk_reservations_job_type_prices"),
        "reservations",
        "prices",
        ["job_type", "price_version", "unit_price"],
        ["job_type", "version", "unit_price"],
    )
    # Like the ledger: the service's role may add versions and read them, no more.
    op.execute("GRANT SELECT, INSERT ON prices TO credits_service")
    for operation in ("UPDATE OR DELETE", "TRUNCATE"):
        suffix = "append_only" if operation == "UPDATE OR DELETE" else "no_truncate"
        level = "ROW" if operation == "UPDATE OR DELETE" else "STATEMENT"
        op.execute(
            f"CREATE TRIGGER prices_{suffix} BEFORE {operation} ON prices"
            f" FOR EACH {level} EXECUTE FUNCTION credits_refuse_change()"
        )


def _drop_price_tables() -> None:
    op.drop_constraint(op.f("fk_reservations_job_type_prices"), "reservations")
    op.drop_constraint(op.f("ck_reservations_priced_consistent"), "reservations")
    for column in ("quantity", "unit_price", "price_version"):
        op.drop_column("reservations", column)
    # Its triggers go with it.
    op.drop_table("prices")
