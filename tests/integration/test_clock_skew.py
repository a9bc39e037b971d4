"""Two instances whose own clocks differ by 30 seconds, on one database, agree on every
expiry: the ledger's time is PostgreSQL's clock as each instance measures it
(service.store.clock, docs/architecture.md "Time"), whichever instance reserves, settles
by a read, or confirms. An instance without a measured offset refuses calls."""

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy.ext.asyncio import create_async_engine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.app import database_clock
from service.ledger import failures
from service.store.clock import DatabaseClock
from service.store.postgres import sqlalchemy_url
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import (
    RunningServer,
    error_details,
    free_port,
    funded_account,
    new_id,
    open_channel,
    server_settings,
    start_server,
)

SKEW_SECONDS = 30.0
TTL_SECONDS = 10
RESERVED = 7
# Two instances' clocks disagree by at most twice the measurement error (the default
# CREDITS_CLOCK_ERROR_MAX_SECONDS); the test's own reading of the time adds its call.
AGREEMENT_SECONDS = 2 * 0.05 + 1.0


async def started(database_url: str, pki: Path, skew: float) -> tuple[RunningServer, DatabaseClock]:
    skewed = {"CREDITS_ENV": "development", "CREDITS_TEST_CLOCK_SKEW_SECONDS": str(skew)}
    clock = database_clock(server_settings(database_url, pki, 0, **skewed))
    server = await start_server(database_url, pki, 0, clock, **skewed)
    assert await clock.measure(server.engine)
    return server, clock


@pytest.fixture(scope="module", params=[SKEW_SECONDS, -SKEW_SECONDS], ids=["ahead", "behind"])
async def instances(
    request: pytest.FixtureRequest, database_url: str, pki: Path
) -> AsyncIterator[tuple[tuple[RunningServer, DatabaseClock], tuple[RunningServer, DatabaseClock]]]:
    normal = await started(database_url, pki, 0.0)
    skewed = await started(database_url, pki, request.param)
    yield normal, skewed
    await normal[0].stop()
    await skewed[0].stop()


def wall_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_the_skewed_instance_has_a_wrong_clock_and_the_right_time(
    instances: tuple[tuple[RunningServer, DatabaseClock], tuple[RunningServer, DatabaseClock]],
) -> None:
    (_, normal), (_, skewed) = instances
    # The setting moved the instance's own clock ...
    own_skew = (skewed.local() - wall_now()).total_seconds()
    assert abs(abs(own_skew) - SKEW_SECONDS) < 1
    # ... and its ledger's time is the database's all the same.
    assert abs((skewed() - normal()).total_seconds()) < AGREEMENT_SECONDS


@pytest.mark.parametrize("reserving", ["normal", "skewed"])
async def test_instances_with_skewed_clocks_agree_on_an_expiry(
    instances: tuple[tuple[RunningServer, DatabaseClock], tuple[RunningServer, DatabaseClock]],
    pki: Path,
    reserving: str,
) -> None:
    """Reserve (ttl 10 s) and Confirm through one instance, a settling read through the
    other in between: the reservation is alive for both."""
    (normal, _), (skewed, _) = instances
    first, other = (normal, skewed) if reserving == "normal" else (skewed, normal)
    async with (
        open_channel(pki, "ops", first.address) as ops_channel,
        open_channel(pki, "backend", first.address) as first_channel,
        open_channel(pki, "backend", other.address) as other_channel,
    ):
        ops, one, two = Stub(ops_channel), Stub(first_channel), Stub(other_channel)
        account = await funded_account(ops, 100)
        before = wall_now()
        reserved = await one.Reserve(
            pb.ReserveRequest(
                account_id=account,
                amount=RESERVED,
                idempotency_key=new_id(),
                ttl=Duration(seconds=TTL_SECONDS),
            ),
            timeout=T,
        )
        reservation = reserved.reservation
        # Stamped by the database's time, whichever instance reserved.
        lifetime = reservation.expires_at.ToDatetime(datetime.UTC) - before
        assert abs(lifetime.total_seconds() - TTL_SECONDS) < AGREEMENT_SECONDS

        balance = await two.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
        assert balance.reserved == RESERVED
        seen = await two.GetReservation(
            pb.GetReservationRequest(account_id=account, reservation_id=reservation.reservation_id),
            timeout=T,
        )
        assert seen.reservation.status == pb.RESERVATION_STATUS_RESERVED

        await one.Confirm(
            pb.ConfirmRequest(
                account_id=account, reservation_id=reservation.reservation_id, amount=RESERVED
            ),
            timeout=T,
        )
        balance = await two.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
        assert (balance.available, balance.reserved) == (100 - RESERVED, 0)


async def test_an_instance_that_has_not_measured_the_database_clock_refuses_calls(
    database_url: str, pki: Path
) -> None:
    clock = DatabaseClock(0.05)
    with pytest.raises(failures.StoreUnavailable):
        clock()
    server = await start_server(database_url, pki, clock=clock)
    try:
        async with open_channel(pki, "backend", server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await Stub(channel).GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_details(caught.value)[0] == failures.StoreUnavailable.reason
        # Measured, it serves.
        assert await clock.measure(server.engine)
        async with open_channel(pki, "backend", server.address) as channel:
            await Stub(channel).GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
    finally:
        await server.stop()


async def test_a_measurement_that_cannot_bound_its_error_is_discarded(database_url: str) -> None:
    engine = create_async_engine(sqlalchemy_url(database_url))
    try:
        # No round trip to a database is a nanosecond long.
        clock = DatabaseClock(1e-9)
        assert not await clock.measure(engine)
        with pytest.raises(failures.StoreUnavailable):
            clock()
    finally:
        await engine.dispose()


async def test_an_unreachable_database_leaves_the_clock_unmeasured() -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    engine = create_async_engine(sqlalchemy_url(url), connect_args={"timeout": 2})
    try:
        assert not await DatabaseClock(0.05).measure(engine)
    finally:
        await engine.dispose()


async def test_a_pool_with_no_connection_free_leaves_the_clock_as_it_was(
    database_url: str,
) -> None:
    engine = create_async_engine(
        sqlalchemy_url(database_url), pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    try:
        clock = DatabaseClock(0.05)
        assert await clock.measure(engine)
        measured = clock() - clock.local()
        async with engine.connect():
            # The pool's one connection is taken: the measurement times out waiting.
            assert not await clock.measure(engine)
        assert abs((clock() - clock.local()) - measured) < datetime.timedelta(milliseconds=1)
        assert await clock.measure(engine)
    finally:
        await engine.dispose()
