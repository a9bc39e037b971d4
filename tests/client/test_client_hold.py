"""`hold()` against the real server: confirm on success (all, or what was captured),
release on an exception or a cancellation with a reason naming it, the original
exception never hidden by a failed Release; balances exact afterwards."""

import asyncio
import datetime
import logging

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits_client import (
    CreditsClient,
    Hold,
    InsufficientCredits,
    ReservationStatus,
)
from tests.client.conftest import LockedAccount, funded
from tests.support import MovableClock

# The first extension comes after a third of the ttl (2 s here), plus scheduling.
KEEPALIVE_WAIT_SECONDS_MAX = 10.0
POLL_SECONDS = 0.05
BACKGROUND_RELEASE_SECONDS_MAX = 5.0


class WorkFailed(Exception):
    pass


async def available_and_reserved(client: CreditsClient, account: str) -> tuple[int, int]:
    balance = await client.balance(account)
    return balance.available, balance.reserved


async def release_reason(admin_engine: AsyncEngine, reservation_id: str) -> str:
    async with admin_engine.connect() as connection:
        reason = await connection.scalar(
            text("SELECT release_reason FROM reservations WHERE reservation_id = :r"),
            {"r": reservation_id},
        )
    return str(reason)


async def test_success_confirms_the_whole_reservation(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    async with backend_client.hold(account, 300, job_type="story", job_id="job-7") as hold:
        assert await available_and_reserved(backend_client, account) == (700, 300)
        assert hold.expires_at > datetime.datetime.now(datetime.UTC)
        assert hold.reservation.job_type == "story"

    assert hold.settled is not None
    assert hold.settled.reservation_id == hold.reservation_id
    assert hold.settled.status is ReservationStatus.CONFIRMED
    assert hold.settled.confirmed_amount == 300
    assert await available_and_reserved(backend_client, account) == (700, 0)


async def test_a_partial_capture_confirms_that_much_and_gives_back_the_rest(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    async with backend_client.hold(account, 300, ttl=datetime.timedelta(minutes=2)) as hold:
        hold.capture(120)

    assert hold.settled is not None
    assert hold.settled.confirmed_amount == 120
    assert await available_and_reserved(backend_client, account) == (880, 0)


async def test_capturing_nothing_releases(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    async with backend_client.hold(account, 300) as hold:
        hold.capture(0)

    assert hold.settled is not None
    assert hold.settled.status is ReservationStatus.RELEASED
    assert await available_and_reserved(backend_client, account) == (1000, 0)


async def test_a_capture_beyond_the_reservation_is_refused_at_once(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    with pytest.raises(ValueError, match="between 0 and 300"):
        async with backend_client.hold(account, 300) as hold:
            hold.capture(301)

    # The ValueError ended the work: the credits went back.
    assert await available_and_reserved(backend_client, account) == (1000, 0)


async def test_an_exception_releases_naming_its_type_and_goes_on(
    ops_client: CreditsClient, backend_client: CreditsClient, admin_engine: AsyncEngine
) -> None:
    account = await funded(ops_client, 1000)

    with pytest.raises(WorkFailed):
        async with backend_client.hold(account, 300) as hold:
            raise WorkFailed

    assert hold.settled is not None
    assert hold.settled.status is ReservationStatus.RELEASED
    assert await available_and_reserved(backend_client, account) == (1000, 0)
    assert await release_reason(admin_engine, hold.reservation_id) == "failed: WorkFailed"


async def test_a_cancelled_task_releases_and_stays_cancelled(
    ops_client: CreditsClient, backend_client: CreditsClient, admin_engine: AsyncEngine
) -> None:
    account = await funded(ops_client, 1000)
    entered = asyncio.Event()
    holds = []

    async def job() -> None:
        async with backend_client.hold(account, 300) as hold:
            holds.append(hold)
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(job())
    await entered.wait()
    assert await available_and_reserved(backend_client, account) == (700, 300)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert await available_and_reserved(backend_client, account) == (1000, 0)
    reason = await release_reason(admin_engine, holds[0].reservation_id)
    assert reason == "cancelled: CancelledError"


async def test_a_timeout_around_the_work_releases(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5), backend_client.hold(account, 300):
            await asyncio.sleep(3600)

    assert await available_and_reserved(backend_client, account) == (1000, 0)


async def test_a_failed_release_never_hides_the_original_exception(
    ops_client: CreditsClient, backend_client: CreditsClient, caplog: pytest.LogCaptureFixture
) -> None:
    account = await funded(ops_client, 1000)

    async def work_that_fails(hold: Hold) -> None:
        # Someone else settles the reservation: the hold's Release will be refused.
        await backend_client.confirm(account, hold.reservation_id, 50)
        raise WorkFailed

    hold = backend_client.hold(account, 300)
    with caplog.at_level(logging.WARNING, logger="credits_client"), pytest.raises(WorkFailed):
        async with hold:
            await work_that_fails(hold)

    assert hold.settled is None
    failed = [r for r in caplog.records if r.name == "credits_client.hold"]
    assert len(failed) == 1
    assert failed[0].__dict__["reservation_id"] == hold.reservation_id
    assert failed[0].__dict__["error"] == "ReservationNotActive"
    assert await available_and_reserved(backend_client, account) == (950, 0)


async def test_insufficient_credits_raise_on_entry_and_the_body_never_runs(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 100)
    ran = False

    with pytest.raises(InsufficientCredits) as raised:
        async with backend_client.hold(account, 300):
            ran = True

    assert not ran
    assert raised.value.idempotency_key  # the key the Reserve sent
    assert await available_and_reserved(backend_client, account) == (100, 0)


async def test_keepalive_extends_a_long_job_past_its_ttl(
    ops_client: CreditsClient, backend_client: CreditsClient, clock: MovableClock
) -> None:
    account = await funded(ops_client, 1000)
    ttl = datetime.timedelta(seconds=6)

    async with backend_client.hold(account, 300, ttl=ttl, keepalive=True) as hold:
        first_expiry = hold.expires_at
        for _ in range(int(KEEPALIVE_WAIT_SECONDS_MAX / POLL_SECONDS)):
            if hold.expires_at != first_expiry:
                break
            await asyncio.sleep(POLL_SECONDS)
        assert hold.expires_at > first_expiry, "extended"
        # The service's time passes the first expiry, not the extended one.
        clock.advance((first_expiry - clock()).total_seconds() + 0.2)
        assert await available_and_reserved(backend_client, account) == (700, 300)

    assert hold.settled is not None
    assert hold.settled.status is ReservationStatus.CONFIRMED
    assert await available_and_reserved(backend_client, account) == (700, 0)


async def test_a_release_goes_on_when_the_task_is_cancelled_again_while_releasing(
    ops_client: CreditsClient, backend_client: CreditsClient, admin_engine: AsyncEngine
) -> None:
    account = await funded(ops_client, 1000)
    entered = asyncio.Event()

    async def job() -> None:
        async with backend_client.hold(account, 300):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(job())
    await entered.wait()
    async with LockedAccount(admin_engine, account):
        task.cancel()  # the Release waits for the account's lock
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(int(BACKGROUND_RELEASE_SECONDS_MAX / POLL_SECONDS)):
        if await available_and_reserved(backend_client, account) == (1000, 0):
            break
        await asyncio.sleep(POLL_SECONDS)
    assert await available_and_reserved(backend_client, account) == (1000, 0)
