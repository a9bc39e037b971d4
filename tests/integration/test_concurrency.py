"""Concurrent calls on one account: no interleaving overdraws, double-spends or
double-settles."""

import asyncio

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.store import reconcile
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import error_details, funded_account, new_id


async def outcome(call: grpc.aio.UnaryUnaryCall) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return error_details(err)[0]
    return "OK"


async def test_fifty_reserves_against_twenty_credits(ops: Stub, admin_engine: AsyncEngine) -> None:
    account = await funded_account(ops, 20)
    results = await asyncio.gather(
        *(
            outcome(
                ops.Reserve(
                    pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id()),
                    timeout=T,
                )
            )
            for _ in range(50)
        )
    )
    assert results.count("OK") == 20
    assert results.count("INSUFFICIENT_CREDITS") == 30
    b = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert (b.available, b.reserved) == (0, 20)
    async with admin_engine.connect() as conn:
        negative = await conn.scalar(
            text("SELECT count(*) FROM grants WHERE account_id = :a AND remaining_amount < 0"),
            {"a": account},
        )
    assert negative == 0


async def test_concurrent_replays_of_one_key_make_one_reservation(ops: Stub) -> None:
    account, key = new_id(), new_id("key")
    await funded_account(ops, 100, account)
    request = pb.ReserveRequest(account_id=account, amount=7, idempotency_key=key)
    responses = await asyncio.gather(*(ops.Reserve(request, timeout=T) for _ in range(30)))
    assert len({r.reservation.reservation_id for r in responses}) == 1
    b = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert (b.available, b.reserved) == (93, 7)


async def test_concurrent_replays_of_one_grant_grant_once(ops: Stub) -> None:
    account, key = new_id(), new_id("key")
    request = pb.GrantRequest(
        account_id=account, amount=100, source=pb.GRANT_SOURCE_PURCHASE, idempotency_key=key
    )
    responses = await asyncio.gather(*(ops.Grant(request, timeout=T) for _ in range(30)))
    assert len({r.grant.grant_id for r in responses}) == 1
    b = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert b.available == 100


async def test_one_key_raced_on_two_accounts_succeeds_once(ops: Stub) -> None:
    key = new_id("key")
    requests = [
        pb.GrantRequest(
            account_id=new_id(), amount=5, source=pb.GRANT_SOURCE_PURCHASE, idempotency_key=key
        )
        for _ in range(10)
    ]
    results = await asyncio.gather(*(outcome(ops.Grant(r, timeout=T)) for r in requests))
    assert results.count("OK") == 1
    assert results.count("IDEMPOTENCY_KEY_REUSED") == 9


async def test_confirm_and_release_racing_on_one_reservation(ops: Stub) -> None:
    account = await funded_account(ops, 1000)
    captured = 0
    for _ in range(10):
        r = (
            await ops.Reserve(
                pb.ReserveRequest(account_id=account, amount=10, idempotency_key=new_id()),
                timeout=T,
            )
        ).reservation
        confirm = ops.Confirm(
            pb.ConfirmRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
        )
        release = ops.Release(
            pb.ReleaseRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
        )
        confirmed, released = await asyncio.gather(outcome(confirm), outcome(release))
        assert sorted([confirmed, released]) == ["OK", "RESERVATION_NOT_ACTIVE"]
        captured += 10 if confirmed == "OK" else 0
    b = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert (b.available, b.reserved) == (1000 - captured, 0)


async def test_mixed_traffic_on_few_accounts_keeps_every_invariant(
    ops: Stub, admin_engine: AsyncEngine
) -> None:
    accounts = [new_id() for _ in range(3)]
    for account in accounts:
        await funded_account(ops, 500, account)

    async def cycle(i: int) -> None:
        account = accounts[i % len(accounts)]
        try:
            r = (
                await ops.Reserve(
                    pb.ReserveRequest(account_id=account, amount=3, idempotency_key=new_id()),
                    timeout=T,
                )
            ).reservation
        except grpc.aio.AioRpcError:
            return
        if i % 3 == 0:
            await ops.Release(
                pb.ReleaseRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
            )
        else:
            await ops.Confirm(
                pb.ConfirmRequest(
                    account_id=account, reservation_id=r.reservation_id, amount=i % 3
                ),
                timeout=T,
            )

    await asyncio.gather(*(cycle(i) for i in range(150)))
    async with admin_engine.connect() as conn:
        assert await reconcile.reconcile(conn) == []
