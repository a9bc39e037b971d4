"""Several instances are safe together: two `python -m service` processes on one
PostgreSQL and one Redis, both sweepers running every few milliseconds, and concurrent
traffic on a few contended accounts sent to either instance. Afterwards nothing expired
twice, no update was lost, the ledger reconciles, and every balance is exactly what the
acknowledged operations imply.

Two kinds of account keep the expected balances exact:
- spent accounts get grants that never expire, and reservations that are confirmed
  (in part), released or abandoned to expire: their balance ends at what was granted
  minus what was confirmed;
- expiring accounts get grants that expire during the traffic and grants that never do,
  and only reservations that are abandoned: they end at the grants that never expire,
  with every expiring grant expired exactly once in full.
"""

import asyncio
import datetime
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.store import reconcile
from tests.integration.test_ratelimit_redis import RedisProcess
from tests.service_process import ServiceProcess, production_env
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import error_details, free_port, new_id, open_channel

SPENT_ACCOUNTS = 3
EXPIRING_ACCOUNTS = 2
WORKERS_PER_ACCOUNT = 6
TRAFFIC_SECONDS = 4.0
GRANTS_PER_ACCOUNT = 8
GRANT_AMOUNT = 1000
# Expiring grants expire while the traffic runs, each at its own moment.
GRANT_EXPIRY_SECONDS_MIN = 2.0
GRANT_EXPIRY_SECONDS_MAX = 3.5
RESERVE_AMOUNT_MAX = 120
# Abandoned reservations expire at the shortest allowed TTL; the others outlive the test.
ABANDONED_TTL_SECONDS = 1
KEPT_TTL_SECONDS = 300
SWEEPER_INTERVAL_SECONDS = "0.05"
# How long the sweepers get to settle everything after the traffic stops.
SETTLE_TIMEOUT_SECONDS = 30.0
SETTLE_POLL_SECONDS = 0.2
# Failures a caller is told about and that change nothing: the test expects only these.
EXPECTED_REFUSALS = {
    ("FAILED_PRECONDITION", "INSUFFICIENT_CREDITS"),
    ("FAILED_PRECONDITION", "RESERVATION_NOT_ACTIVE"),
}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def instances(
    redis: RedisProcess, database_url: str, pki: Path
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    def env() -> dict[str, str]:
        return production_env(
            database_url,
            pki,
            free_port(),
            CREDITS_REDIS_URL=redis.url,
            CREDITS_SWEEPER_INTERVAL_SECONDS=SWEEPER_INTERVAL_SECONDS,
            CREDITS_RESERVE_RATE_PER_ACCOUNT="100000/second",
            CREDITS_DB_POOL_SIZE="8",
        )

    with ServiceProcess(env()) as first, ServiceProcess(env()) as second:
        yield first, second


@dataclass
class Stubs:
    """The development callers' stubs of each instance."""

    gateway: list[Stub]
    backend: list[Stub]

    def any_backend(self) -> Stub:
        return random.choice(self.backend)


@pytest.fixture
async def stubs(
    instances: tuple[ServiceProcess, ServiceProcess], pki: Path
) -> AsyncIterator[Stubs]:
    channels = [
        open_channel(pki, caller, instance.address)
        for caller in ("gateway", "backend")
        for instance in instances
    ]
    try:
        yield Stubs([Stub(c) for c in channels[:2]], [Stub(c) for c in channels[2:]])
    finally:
        for channel in channels:
            await channel.close()


@dataclass
class Acknowledged:
    """What the instances acknowledged, per account: the expected state."""

    never_expiring: dict[str, int] = field(default_factory=dict)
    confirmed: dict[str, int] = field(default_factory=dict)
    expiring_grants: set[str] = field(default_factory=set)
    # reservation id → (account, final status, confirmed amount)
    reservations: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    refusals: list[tuple[str, str]] = field(default_factory=list)


def refusal(err: grpc.aio.AioRpcError) -> tuple[str, str]:
    return err.code().name, error_details(err)[0]


async def grant(
    stub: Stub, account: str, acked: Acknowledged, expires_in_seconds: float | None
) -> None:
    request = pb.GrantRequest(
        account_id=account,
        amount=GRANT_AMOUNT,
        source=pb.GRANT_SOURCE_PURCHASE,
        idempotency_key=new_id("grant"),
    )
    if expires_in_seconds is not None:
        # To the nanosecond: a whole-second expiry would cut up to a second off a short one.
        moment = datetime.datetime.now(datetime.UTC)
        request.expires_at.FromDatetime(moment + datetime.timedelta(seconds=expires_in_seconds))
    response = await stub.Grant(request, timeout=T)
    if expires_in_seconds is None:
        acked.never_expiring[account] = acked.never_expiring.get(account, 0) + GRANT_AMOUNT
    else:
        acked.expiring_grants.add(response.grant.grant_id)


async def reserve_everywhere(
    stubs: Stubs, account: str, acked: Acknowledged, ttl_seconds: int
) -> pb.Reservation | None:
    """One Reserve sent to both instances at once (a client retrying on another
    instance): every instance that answers answers the same reservation. None if both
    refused. (A refusal stores nothing, so the other may still succeed.)"""
    request = pb.ReserveRequest(
        account_id=account,
        amount=random.randint(1, RESERVE_AMOUNT_MAX),
        idempotency_key=new_id("job"),
        ttl=duration_pb2.Duration(seconds=ttl_seconds),
    )
    answers = await asyncio.gather(
        *(stub.Reserve(request, timeout=T) for stub in stubs.backend), return_exceptions=True
    )
    reservations = {}
    for answer in answers:
        if isinstance(answer, pb.ReserveResponse):
            reservations[answer.reservation.reservation_id] = answer.reservation
        elif isinstance(answer, grpc.aio.AioRpcError):
            acked.refusals.append(refusal(answer))
        else:
            raise answer
    assert len(reservations) <= 1, "one idempotency key made two reservations"
    if not reservations:
        return None
    (reservation,) = reservations.values()
    # Expired, unless the caller settles it otherwise.
    acked.reservations[reservation.reservation_id] = (account, 4, 0)
    return reservation


async def spend(stubs: Stubs, account: str, acked: Acknowledged, stop_at: float) -> None:
    """Reserve, then confirm part, release, or abandon it to expire, on either instance."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        outcome = random.choice(("confirm", "release", "abandon"))
        ttl = ABANDONED_TTL_SECONDS if outcome == "abandon" else KEPT_TTL_SECONDS
        reservation = await reserve_everywhere(stubs, account, acked, ttl)
        if reservation is None or outcome == "abandon":
            continue
        reservation_id = reservation.reservation_id
        try:
            if outcome == "confirm":
                amount = random.randint(1, reservation.amount)
                request = pb.ConfirmRequest(
                    account_id=account, reservation_id=reservation_id, amount=amount
                )
                done = await stubs.any_backend().Confirm(request, timeout=T)
                assert done.reservation.confirmed_amount == amount
                acked.reservations[reservation_id] = (account, 2, amount)
                acked.confirmed[account] = acked.confirmed.get(account, 0) + amount
            else:
                release = pb.ReleaseRequest(account_id=account, reservation_id=reservation_id)
                await stubs.any_backend().Release(release, timeout=T)
                acked.reservations[reservation_id] = (account, 3, 0)
        except grpc.aio.AioRpcError as err:
            acked.refusals.append(refusal(err))


async def hold_and_read(stubs: Stubs, account: str, acked: Acknowledged, stop_at: float) -> None:
    """Reads (which settle the account too) and reservations left to expire, racing
    the sweepers of both instances for the same expiries."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        await reserve_everywhere(stubs, account, acked, ABANDONED_TTL_SECONDS)
        await stubs.any_backend().GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)


async def settled(engine: AsyncEngine, accounts: list[str]) -> bool:
    """Time has decided everything: every reservation left open has expired and been
    settled, and every grant that expires has expired."""
    async with engine.connect() as conn:
        due = await conn.execute(
            text(
                "SELECT (SELECT count(*) FROM reservations"
                "         WHERE account_id = ANY(:accounts) AND status = 1)"
                "     + (SELECT count(*) FROM grants WHERE account_id = ANY(:accounts)"
                "         AND remaining_amount > 0 AND expires_at IS NOT NULL)"
            ),
            {"accounts": accounts},
        )
        count: int = due.scalar_one()
        return count == 0


async def test_two_instances_with_their_sweepers_agree_on_every_balance(
    stubs: Stubs, admin_engine: AsyncEngine
) -> None:
    spent = [new_id("multi") for _ in range(SPENT_ACCOUNTS)]
    expiring = [new_id("multi") for _ in range(EXPIRING_ACCOUNTS)]
    acked = Acknowledged()
    grants = []
    for n in range(GRANTS_PER_ACCOUNT):
        stub = stubs.gateway[n % 2]
        grants += [grant(stub, account, acked, None) for account in spent + expiring]
        expiry = random.uniform(GRANT_EXPIRY_SECONDS_MIN, GRANT_EXPIRY_SECONDS_MAX)
        grants += [grant(stub, account, acked, expiry) for account in expiring]
    await asyncio.gather(*grants)

    stop_at = asyncio.get_running_loop().time() + TRAFFIC_SECONDS
    await asyncio.gather(
        *(
            spend(stubs, account, acked, stop_at)
            for account in spent
            for _ in range(WORKERS_PER_ACCOUNT)
        ),
        *(
            hold_and_read(stubs, account, acked, stop_at)
            for account in expiring
            for _ in range(WORKERS_PER_ACCOUNT)
        ),
    )
    assert set(acked.refusals) <= EXPECTED_REFUSALS, acked.refusals

    # Only the sweepers settle from here on: no RPC touches these accounts until then.
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_SECONDS
    while not await settled(admin_engine, spent + expiring):
        assert asyncio.get_running_loop().time() < deadline, "the sweepers did not settle"
        await asyncio.sleep(SETTLE_POLL_SECONDS)

    for account in spent + expiring:
        expected = acked.never_expiring[account] - acked.confirmed.get(account, 0)
        for stub in stubs.backend:
            balance = await stub.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
            assert (balance.available, balance.reserved) == (expected, 0), account

    async with admin_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT r.reservation_id::text, r.status, r.confirmed_amount, r.amount,"
                "       coalesce(sum(e.amount) FILTER (WHERE e.kind = 'reservation_expiry'), 0)"
                "  FROM reservations r LEFT JOIN ledger_entries e"
                "    ON e.reservation_id = r.reservation_id"
                " WHERE r.account_id = ANY(:a) GROUP BY r.reservation_id"
            ),
            {"a": spent + expiring},
        )
        stored = {row[0]: tuple(row[1:]) for row in rows}
        assert set(stored) == set(acked.reservations), "a reservation nobody acknowledged"
        for reservation, (status, confirmed, amount, expired) in stored.items():
            _, expected_status, expected_confirmed = acked.reservations[reservation]
            assert (status, confirmed) == (expected_status, expected_confirmed), reservation
            # Expired once: exactly its amount went back, never twice.
            assert expired == (amount if status == 4 else 0), reservation

        rows = await conn.execute(
            text(
                "SELECT g.grant_id::text, g.original_amount, g.expired_amount,"
                "       coalesce(-sum(e.amount) FILTER (WHERE e.kind = 'grant_expiry'), 0)"
                "  FROM grants g LEFT JOIN ledger_entries e ON e.grant_id = g.grant_id"
                " WHERE g.account_id = ANY(:a) GROUP BY g.grant_id"
            ),
            {"a": expiring},
        )
        for grant_id, original, expired, expiry_entries in rows:
            if grant_id in acked.expiring_grants:
                assert expired == expiry_entries == original, grant_id
            else:
                assert expired == expiry_entries == 0, grant_id
    async with admin_engine.connect() as conn:
        assert await reconcile.reconcile(conn) == []
