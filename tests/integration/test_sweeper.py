"""The sweeper settles what time decided for accounts nobody touches: the rows and the
ledger catch up, and the balance (already right before) stays the same."""

import asyncio
import datetime

from google.protobuf import duration_pb2, timestamp_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.store import PostgresStore
from service.sweeper import ACCOUNTS_PER_ROUND_MAX
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, funded_account, new_id


async def test_settle_due_expires_overdue_reservations_and_grants(
    ops: Stub, admin_engine: AsyncEngine, credits_server: RunningServer
) -> None:
    account = new_id()
    soon = timestamp_pb2.Timestamp()
    soon.FromDatetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1))
    await ops.Grant(
        pb.GrantRequest(
            account_id=account,
            amount=50,
            source=pb.GRANT_SOURCE_PROMOTION,
            idempotency_key=new_id(),
            expires_at=soon,
        ),
        timeout=T,
    )
    await funded_account(ops, 100, account)
    r = (
        await ops.Reserve(
            pb.ReserveRequest(
                account_id=account,
                amount=70,
                idempotency_key=new_id(),
                ttl=duration_pb2.Duration(seconds=1),
            ),
            timeout=T,
        )
    ).reservation
    await asyncio.sleep(1.2)
    before = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)

    store = PostgresStore(credits_server.engine)
    while await store.settle_due(ACCOUNTS_PER_ROUND_MAX) == ACCOUNTS_PER_ROUND_MAX:
        pass

    after = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert (before.available, before.reserved) == (after.available, after.reserved) == (100, 0)
    async with admin_engine.connect() as conn:
        status = await conn.scalar(
            text("SELECT status FROM reservations WHERE reservation_id = :r"),
            {"r": r.reservation_id},
        )
        kinds = (
            await conn.execute(
                text(
                    "SELECT kind, sum(amount) FROM ledger_entries WHERE account_id = :a GROUP BY 1"
                ),
                {"a": account},
            )
        ).all()
    assert status == pb.RESERVATION_STATUS_EXPIRED
    assert dict(kinds) == {
        "grant": 150,
        "reserve": -70,
        "reservation_expiry": 70,
        "grant_expiry": -50,
    }
