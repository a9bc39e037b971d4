"""The database itself guards the ledger: append-only entries, constraints, and a
service role that can do no more than it needs."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.store.database import SERVICE_ROLE
from tests.support import funded_account


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = amount + 1 WHERE account_id = :a",
        "DELETE FROM ledger_entries WHERE account_id = :a",
    ],
)
async def test_the_ledger_refuses_update_and_delete_even_to_its_owner(
    ops: Stub, admin_engine: AsyncEngine, statement: str
) -> None:
    account = await funded_account(ops, 10)
    async with admin_engine.connect() as conn:
        with pytest.raises(DBAPIError, match="append-only"):
            await conn.execute(text(statement), {"a": account})


async def test_the_ledger_refuses_truncate(admin_engine: AsyncEngine) -> None:
    async with admin_engine.connect() as conn:
        with pytest.raises(DBAPIError, match="append-only"):
            await conn.execute(text("TRUNCATE ledger_entries CASCADE"))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = 1 WHERE account_id = :a",
        "DELETE FROM grants WHERE account_id = :a",
        "CREATE TABLE intruder (id int)",
        "DROP TABLE ledger_entries",
    ],
)
async def test_the_service_role_has_least_privilege(
    ops: Stub, admin_engine: AsyncEngine, statement: str
) -> None:
    account = await funded_account(ops, 10)
    async with admin_engine.connect() as conn:
        await conn.execute(text(f"SET ROLE {SERVICE_ROLE}"))
        try:
            with pytest.raises(DBAPIError, match=r"permission denied|must be owner"):
                await conn.execute(text(statement), {"a": account})
        finally:
            await conn.execute(text("RESET ROLE"))


async def test_a_negative_remaining_amount_is_refused_by_a_constraint(
    ops: Stub, admin_engine: AsyncEngine
) -> None:
    account = await funded_account(ops, 10)
    async with admin_engine.connect() as conn:
        with pytest.raises(DBAPIError, match="ck_grants_remaining_bounded"):
            await conn.execute(
                text("UPDATE grants SET remaining_amount = -1 WHERE account_id = :a"),
                {"a": account},
            )
