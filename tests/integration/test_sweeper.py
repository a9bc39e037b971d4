"""The sweeper settles what time decided for accounts nobody touches: the rows and the
ledger catch up without any RPC on the account, and an account that cannot be settled
never stops the others."""

import datetime
import uuid
from collections.abc import AsyncIterator

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.store.postgres import PostgresStore
from service.store.sweeper import ACCOUNTS_PER_ROUND_MAX, sweep
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import MovableClock, RunningServer, funded_account, new_id


async def sweep_all(store: PostgresStore, clock: MovableClock) -> None:
    while await sweep(store, clock) == ACCOUNTS_PER_ROUND_MAX:
        pass


async def overdue_account(ops: Stub, clock: MovableClock) -> tuple[str, str]:
    """An account with a promotion that expires in 1 s and a 70-credit hold of 1 s, with
    the clock moved past both; (account, reservation id)."""
    account = new_id()
    soon = timestamp_pb2.Timestamp()
    soon.FromDatetime(clock() + datetime.timedelta(seconds=1))
    grant = pb.GrantRequest(
        account_id=account,
        amount=50,
        source=pb.GRANT_SOURCE_PROMOTION,
        idempotency_key=new_id(),
        expires_at=soon,
    )
    await ops.Grant(grant, timeout=T)
    await funded_account(ops, 100, account)
    reserve = pb.ReserveRequest(
        account_id=account,
        amount=70,
        idempotency_key=new_id(),
        ttl=duration_pb2.Duration(seconds=1),
    )
    r = (await ops.Reserve(reserve, timeout=T)).reservation
    clock.advance(1.2)
    return account, r.reservation_id


async def entry_totals(admin_engine: AsyncEngine, account: str) -> dict[str, int]:
    async with admin_engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind, sum(amount) FROM ledger_entries WHERE account_id = :a GROUP BY 1"),
            {"a": account},
        )
        return {kind: int(total) for kind, total in rows}


async def test_sweep_expires_overdue_reservations_and_grants(
    ops: Stub, admin_engine: AsyncEngine, credits_server: RunningServer, clock: MovableClock
) -> None:
    account, reservation_id = await overdue_account(ops, clock)
    assert await entry_totals(admin_engine, account) == {"grant": 150, "reserve": -70}

    await sweep_all(credits_server.store, clock)

    async with admin_engine.connect() as conn:
        status = await conn.scalar(
            text("SELECT status FROM reservations WHERE reservation_id = :r"),
            {"r": reservation_id},
        )
    assert status == pb.RESERVATION_STATUS_EXPIRED
    assert await entry_totals(admin_engine, account) == {
        "grant": 150,
        "reserve": -70,
        "reservation_expiry": 70,
        "grant_expiry": -50,
    }
    b = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert (b.available, b.reserved) == (100, 0)


@pytest.fixture
async def unsettleable_account(admin_engine: AsyncEngine) -> AsyncIterator[str]:
    """An account whose settlement always fails: a trigger refuses any change of its
    reservations (a stand-in for a row the sweeper cannot handle)."""
    account = new_id("broken")
    trigger = f"refuse_{uuid.uuid4().hex[:8]}"
    async with admin_engine.connect() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.account_id = '{account}' THEN RAISE EXCEPTION 'refused by test'; END IF;
              RETURN NEW;
            END $$""")
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {trigger} BEFORE UPDATE ON reservations"
                f" FOR EACH ROW EXECUTE FUNCTION {trigger}()"
            )
        )
    try:
        yield account
    finally:
        async with admin_engine.connect() as conn:
            await conn.execute(text(f"DROP TRIGGER {trigger} ON reservations"))
            await conn.execute(text(f"DROP FUNCTION {trigger}()"))


async def test_an_account_that_fails_to_settle_does_not_block_the_others(
    ops: Stub,
    admin_engine: AsyncEngine,
    credits_server: RunningServer,
    clock: MovableClock,
    unsettleable_account: str,
) -> None:
    broken = await funded_account(ops, 10, unsettleable_account)
    await ops.Reserve(
        pb.ReserveRequest(
            account_id=broken,
            amount=5,
            idempotency_key=new_id(),
            ttl=duration_pb2.Duration(seconds=1),
        ),
        timeout=T,
    )
    # Overdue longest, so it comes first in every round.
    clock.advance(5)
    healthy, _ = await overdue_account(ops, clock)
    failures_before = REGISTRY.get_sample_value("credits_sweeper_failures_total") or 0.0

    await sweep_all(credits_server.store, clock)

    assert "reservation_expiry" in await entry_totals(admin_engine, healthy)
    assert "reservation_expiry" not in await entry_totals(admin_engine, broken)
    failures = REGISTRY.get_sample_value("credits_sweeper_failures_total") or 0.0
    assert failures > failures_before
