"""The names both sides use agree: statuses, sources and entry kinds (Python, SQL and the
contract), the account limit, the account-id pattern, and every SQLSTATE of the error
list."""

import re
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from service.ledger import failures, limits
from service.ledger.model import EntryKind, GrantSource, ReservationStatus

SOURCE = Path(__file__).resolve().parents[2] / "service" / "store" / "sql" / "ledger.sql"


@pytest.mark.parametrize("status", list(ReservationStatus))
async def test_reservation_statuses_agree(
    admin_engine: AsyncEngine, status: ReservationStatus
) -> None:
    async with admin_engine.connect() as conn:
        in_sql = await conn.scalar(text(f"SELECT credits_status_{status.name.lower()}()"))
    assert in_sql == status.value == pb.ReservationStatus.Value(f"RESERVATION_STATUS_{status.name}")


@pytest.mark.parametrize("source", [s for s in GrantSource if s is not GrantSource.UNSPECIFIED])
async def test_grant_sources_agree(admin_engine: AsyncEngine, source: GrantSource) -> None:
    async with admin_engine.connect() as conn:
        in_sql = await conn.scalar(text(f"SELECT credits_source_{source.name.lower()}()"))
    assert in_sql == source.value == pb.GrantSource.Value(f"GRANT_SOURCE_{source.name}")


async def test_the_account_limit_agrees(admin_engine: AsyncEngine) -> None:
    async with admin_engine.connect() as conn:
        in_sql = await conn.scalar(text("SELECT credits_account_credits_max()"))
    assert in_sql == limits.ACCOUNT_CREDITS_MAX
    assert limits.AMOUNT_MAX_LIMIT * 1000 <= limits.ACCOUNT_CREDITS_MAX < limits.AMOUNT_INT64_MAX


async def test_the_account_id_pattern_agrees(admin_engine: AsyncEngine) -> None:
    async with admin_engine.connect() as conn:
        check = await conn.scalar(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conname = 'ck_accounts_account_id_format'"
            )
        )
    assert f"'^{limits.ACCOUNT_ID_REGEX}$'" in str(check)


def test_every_sqlstate_raised_is_a_listed_failure_and_every_listed_one_is_raised() -> None:
    raised = set(re.findall(r"ERRCODE = '(CR\d{3})'", SOURCE.read_text()))
    assert raised == set(failures.BY_SQLSTATE)


async def test_entry_kinds_agree(admin_engine: AsyncEngine) -> None:
    async with admin_engine.connect() as conn:
        check = await conn.scalar(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conname = 'ck_ledger_entries_kind_known'"
            )
        )
    in_sql = set(re.findall(r"'(\w+)'::text", str(check)))
    kinds = [k for k in EntryKind if k is not EntryKind.UNSPECIFIED]
    assert in_sql == {k.stored for k in kinds}
    assert all(pb.EntryKind.Value(f"ENTRY_KIND_{k.name}") == k.value for k in kinds)
    assert len(pb.EntryKind.values()) == len(EntryKind)
