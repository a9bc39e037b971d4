"""Client deadlines stop the work and its database query instead of running on,
and leave no connection behind."""

import asyncio

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, funded_account, new_id

SHORT_DEADLINE_SECONDS = 0.5
LOCK_HELD_PAST_DEADLINE_SECONDS = 0.3


async def test_a_deadline_cancels_the_blocked_query_and_frees_its_connection(
    ops: Stub, admin_engine: AsyncEngine, credits_server: RunningServer
) -> None:
    account = await funded_account(ops, 100)
    calls = credits_server.settings.db_pool_size + 2
    async with admin_engine.connect() as blocker:
        # Hold the account's lock, so every Reserve on it waits inside PostgreSQL.
        await blocker.execution_options(isolation_level="READ COMMITTED")
        transaction = await blocker.begin()
        await blocker.execute(
            text("SELECT 1 FROM accounts WHERE account_id = :a FOR UPDATE"), {"a": account}
        )
        results = await asyncio.gather(
            *(
                ops.Reserve(
                    pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id()),
                    timeout=SHORT_DEADLINE_SECONDS,
                )
                for _ in range(calls)
            ),
            return_exceptions=True,
        )
        # Hold the lock a little past the deadline: a query that ran on would take it now.
        await asyncio.sleep(LOCK_HELD_PAST_DEADLINE_SECONDS)
        await transaction.rollback()
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for r in results
    ), results
    # Nothing ran on once the lock was free: the queries were cancelled, not left queued.
    await asyncio.sleep(0.5)
    balance = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert (balance.available, balance.reserved) == (100, 0)
    # And the pool got its connections back: more calls than it has connections succeed.
    await asyncio.gather(
        *(
            ops.Reserve(
                pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id()), timeout=T
            )
            for _ in range(calls)
        )
    )
