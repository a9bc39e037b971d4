"""Overruns into an overdraft debt that the next grants pay first, and spend limits per UTC
day, month and rolling window.

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from 0005's, and nothing else:
- credits_balance (changed)
- credits_check_spend (new)
- credits_confirm (new)
- credits_confirm (removed)
- credits_get_account (changed)
- credits_grant (changed)
- credits_reserve (changed)
- credits_settings_json (changed)
- credits_spend (new)
- credits_spend_json (new)
- credits_spent_since (new)
- credits_update_account_settings (changed)

Schema by hand (before the functions that read it): accounts' overdraft_limit, debt and
spend limits; grants' debt_paid_amount; reservations' overrun_amount and
overrun_debt_amount with their constraints; the covering usage index and the overrun
index the spend sums read; the entry kinds overrun and debt_repayment.

Upgrade: 0006_overruns_and_spend_limits.sql; downgrade: 0006_overruns_and_spend_limits.down.sql.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 08:13:21
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNT_COLUMNS = (
    "overdraft_limit",
    "debt",
    "spend_limit_day",
    "spend_limit_month",
    "spend_limit_rolling",
)
OLD_KINDS = (
    "'grant', 'reserve', 'release', 'confirm_return', 'reservation_expiry',"
    " 'grant_expiry', 'revoke', 'revoke_reversal'"
)
OLD_STATUS_CONSISTENT = (
    "(status = 1 AND confirmed_amount = 0 AND returned_amount = 0 AND settled_at IS NULL)"
    " OR (status = 2 AND confirmed_amount > 0"
    " AND confirmed_amount + returned_amount = amount AND settled_at IS NOT NULL)"
    " OR (status IN (3, 4) AND confirmed_amount = 0 AND returned_amount = amount"
    " AND settled_at IS NOT NULL)"
)
NEW_STATUS_CONSISTENT = (
    "(status = 1 AND confirmed_amount = 0 AND returned_amount = 0 AND overrun_amount = 0"
    " AND settled_at IS NULL)"
    " OR (status = 2 AND confirmed_amount > 0"
    " AND confirmed_amount + returned_amount = amount + overrun_amount"
    " AND (overrun_amount = 0 OR returned_amount = 0) AND settled_at IS NOT NULL)"
    " OR (status IN (3, 4) AND confirmed_amount = 0 AND returned_amount = amount"
    " AND overrun_amount = 0 AND settled_at IS NOT NULL)"
)
OLD_SETTLED_BOUNDED = (
    "confirmed_amount >= 0 AND returned_amount >= 0"
    " AND confirmed_amount + returned_amount <= amount"
)
NEW_SETTLED_BOUNDED = (
    "confirmed_amount >= 0 AND returned_amount >= 0 AND overrun_amount >= 0"
    " AND overrun_debt_amount BETWEEN 0 AND overrun_amount"
    " AND confirmed_amount + returned_amount <= amount + overrun_amount"
)
OLD_COUNTERS = "revoked_amount >= 0 AND unrecovered_amount >= 0 AND expired_amount >= 0"
OLD_TAKEN = "remaining_amount + revoked_amount + expired_amount <= original_amount"


def _bigint_column(table: str, name: str) -> None:
    op.add_column(
        table, sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table)
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def _usage_index(include: list[str]) -> None:
    op.drop_index(op.f("ix_reservations_usage"), "reservations")
    op.create_index(
        op.f("ix_reservations_usage"),
        "reservations",
        ["account_id", "created_at", "reservation_id"],
        postgresql_include=include,
    )


def upgrade_schema() -> None:
    for column in ACCOUNT_COLUMNS:
        _bigint_column("accounts", column)
    op.add_column(
        "accounts",
        sa.Column(
            "spend_limit_rolling_hours", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
    )
    op.create_check_constraint(
        op.f("ck_accounts_limits_non_negative"),
        "accounts",
        "overdraft_limit BETWEEN 0 AND 1000000000000000000 AND debt >= 0"
        " AND spend_limit_day >= 0 AND spend_limit_month >= 0 AND spend_limit_rolling >= 0",
    )
    op.create_check_constraint(
        op.f("ck_accounts_rolling_window_set"),
        "accounts",
        "spend_limit_rolling_hours BETWEEN 0 AND 744"
        " AND (spend_limit_rolling = 0 OR spend_limit_rolling_hours > 0)",
    )
    _bigint_column("grants", "debt_paid_amount")
    _replace_check("grants", "counters_non_negative", OLD_COUNTERS + " AND debt_paid_amount >= 0")
    _replace_check(
        "grants",
        "taken_bounded",
        "remaining_amount + revoked_amount + expired_amount + debt_paid_amount <= original_amount",
    )
    _bigint_column("reservations", "overrun_amount")
    _bigint_column("reservations", "overrun_debt_amount")
    _replace_check("reservations", "settled_bounded", NEW_SETTLED_BOUNDED)
    _replace_check("reservations", "status_consistent", NEW_STATUS_CONSISTENT)
    _usage_index(["status", "amount", "confirmed_amount", "overrun_amount"])
    op.create_index(
        op.f("ix_reservations_overrun"),
        "reservations",
        ["account_id", "settled_at"],
        postgresql_include=["overrun_amount"],
        postgresql_where=sa.text("overrun_amount > 0"),
    )
    _replace_check(
        "ledger_entries", "kind_known", f"kind IN ({OLD_KINDS}, 'overrun', 'debt_repayment')"
    )


def downgrade_schema() -> None:
    _replace_check("ledger_entries", "kind_known", f"kind IN ({OLD_KINDS})")
    op.drop_index(op.f("ix_reservations_overrun"), "reservations")
    _usage_index([])
    _replace_check("reservations", "status_consistent", OLD_STATUS_CONSISTENT)
    _replace_check("reservations", "settled_bounded", OLD_SETTLED_BOUNDED)
    op.drop_column("reservations", "overrun_debt_amount")
    op.drop_column("reservations", "overrun_amount")
    _replace_check("grants", "taken_bounded", OLD_TAKEN)
    _replace_check("grants", "counters_non_negative", OLD_COUNTERS)
    op.drop_column("grants", "debt_paid_amount")
    op.drop_constraint(op.f("ck_accounts_rolling_window_set"), "accounts")
    op.drop_constraint(op.f("ck_accounts_limits_non_negative"), "accounts")
    for column in (*ACCOUNT_COLUMNS, "spend_limit_rolling_hours"):
        op.drop_column("accounts", column)


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


def upgrade() -> None:
    upgrade_schema()
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
    downgrade_schema()
