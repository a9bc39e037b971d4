"""`hold()` against the real server: confirm on success (all, or what was captured),
release on an exception or a cancellation with a reason naming it, the original
exception never hidden by a failed Release; a replayed key of a finished attempt refused
before the body runs; keepalive up to the lifetime cap; balances exact afterwards."""

import asyncio
import datetime
import logging
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits_client import (
    CreditsClient,
    CreditsError,
    Hold,
    InsufficientCredits,
    JobAlreadySettled,
    ReservationNotActive,
    ReservationStatus,
)
from credits_client.hold import FINAL_EXTENSION_MARGIN_SECONDS
from tests.client.conftest import ClientFactory, LockedAccount, funded
from tests.support import MovableClock, new_id, start_server

# The first extension comes after a third of the ttl (2 s here), plus scheduling.
KEEPALIVE_WAIT_SECONDS_MAX = 10.0
POLL_SECONDS = 0.05
BACKGROUND_RELEASE_SECONDS_MAX = 5.0
# The shortest lifetime cap the service accepts (it must cover its longest ttl, 24 h).
LIFETIME_MAX_SECONDS = 24 * 3600
# How far from its target the last extension may land: the latency of one answer, on
# a busy machine.
FINAL_EXTENSION_SLACK_SECONDS = 0.5


class WorkFailed(Exception):
    pass


def printed(record: logging.LogRecord) -> str:
    """The line a plain `logging.basicConfig()` prints for `record`."""
    return logging.Formatter(logging.BASIC_FORMAT).format(record)


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
    for name in (hold.reservation_id, account, hold.idempotency_key, "ReservationNotActive"):
        assert name in printed(failed[0])
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


async def test_a_retry_with_the_key_of_a_failed_attempt_is_refused_before_the_body_runs(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    key = new_id("story")
    with pytest.raises(WorkFailed):
        async with backend_client.hold(account, 300, idempotency_key=key) as first:
            raise WorkFailed
    ran = False

    retry = backend_client.hold(account, 300, idempotency_key=key)
    with pytest.raises(JobAlreadySettled) as refused:
        async with retry:
            ran = True

    assert not ran, "the work ran again with nothing held"
    assert isinstance(refused.value, ReservationNotActive)
    assert isinstance(refused.value, CreditsError)
    assert refused.value.status is ReservationStatus.RELEASED
    assert refused.value.reservation.reservation_id == first.reservation_id
    assert refused.value.idempotency_key == key
    assert "released" in str(refused.value)
    assert first.reservation_id in str(refused.value)
    assert retry.settled == refused.value.reservation
    assert await available_and_reserved(backend_client, account) == (1000, 0)
    # A new key is a new attempt: it holds credits and runs.
    async with backend_client.hold(account, 300, idempotency_key=f"{key}:attempt:2"):
        ran = True
    assert ran
    assert await available_and_reserved(backend_client, account) == (700, 0)


async def test_rerunning_a_finished_job_with_its_key_is_refused_before_the_body_runs(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    key = new_id("story")
    async with backend_client.hold(account, 300, job_id="job-7", idempotency_key=key) as done:
        done.capture(120)
    ran = False

    with pytest.raises(JobAlreadySettled) as refused:
        async with backend_client.hold(account, 300, job_id="job-7", idempotency_key=key):
            ran = True

    assert not ran, "a finished job ran again for free"
    assert refused.value.status is ReservationStatus.CONFIRMED
    assert refused.value.reservation.reservation_id == done.reservation_id
    assert refused.value.reservation.confirmed_amount == 120
    assert await available_and_reserved(backend_client, account) == (880, 0)


async def test_a_replayed_key_of_an_expired_attempt_is_refused_before_the_body_runs(
    ops_client: CreditsClient, backend_client: CreditsClient, clock: MovableClock
) -> None:
    account = await funded(ops_client, 1000)
    key = new_id("story")
    ttl = datetime.timedelta(seconds=2)
    lost = await backend_client.reserve(account, 300, ttl=ttl, idempotency_key=key)
    clock.advance((lost.expires_at - clock()).total_seconds() + 1)  # the worker died
    ran = False

    with pytest.raises(JobAlreadySettled) as refused:
        async with backend_client.hold(account, 300, ttl=ttl, idempotency_key=key):
            ran = True

    assert not ran
    assert refused.value.status is ReservationStatus.EXPIRED
    assert await available_and_reserved(backend_client, account) == (1000, 0)


async def test_an_active_reservation_past_its_expiry_is_refused_before_the_body_runs(
    database_url: str, pki: Path, ops_client: CreditsClient, make_client: ClientFactory
) -> None:
    # A service whose clock runs behind this machine's answers a reservation that is
    # active by its clock and already past expires_at by ours.
    behind = MovableClock()
    behind.advance(-60)
    server = await start_server(database_url, pki, clock=behind)
    try:
        client = make_client("backend", server.address)
        account = await funded(ops_client, 1000)
        ran = False

        with pytest.raises(JobAlreadySettled) as refused:
            async with client.hold(account, 300, ttl=datetime.timedelta(seconds=30)):
                ran = True
    finally:
        await server.stop()

    assert not ran
    assert refused.value.reservation.status is ReservationStatus.RESERVED  # as answered
    assert refused.value.status is ReservationStatus.EXPIRED


async def test_keepalive_warns_naming_the_reservation_when_it_cannot_extend(
    ops_client: CreditsClient, backend_client: CreditsClient, caplog: pytest.LogCaptureFixture
) -> None:
    account = await funded(ops_client, 1000)
    ttl = datetime.timedelta(seconds=3)

    with caplog.at_level(logging.WARNING, logger="credits_client"):
        async with backend_client.hold(account, 300, ttl=ttl, keepalive=True) as hold:
            hold.capture(0)
            # Someone else settles it: the next extension is refused.
            await backend_client.release(account, hold.reservation_id)
            for _ in range(int(KEEPALIVE_WAIT_SECONDS_MAX / POLL_SECONDS)):
                if any(r.name == "credits_client.hold" for r in caplog.records):
                    break
                await asyncio.sleep(POLL_SECONDS)
        # capture(0): the hold's own Release answers the released reservation again.

    warned = [printed(r) for r in caplog.records if r.name == "credits_client.hold"]
    assert warned
    assert "keepalive" in warned[0]
    assert "RESERVATION_NOT_ACTIVE" in warned[0]
    for name in (hold.reservation_id, account, hold.idempotency_key):
        assert name in warned[0]


async def test_keepalive_extends_up_to_the_lifetime_cap_then_stops(
    database_url: str,
    pki: Path,
    ops_client: CreditsClient,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service_clock = MovableClock()
    server = await start_server(
        database_url,
        pki,
        clock=service_clock,
        CREDITS_RESERVATION_LIFETIME_MAX_SECONDS=str(LIFETIME_MAX_SECONDS),
    )
    try:
        client = make_client("backend", server.address)
        account = await funded(ops_client, 1000)
        ttl = datetime.timedelta(seconds=6)  # keepalive every 2 s
        lifetime = datetime.timedelta(seconds=LIFETIME_MAX_SECONDS)

        with caplog.at_level(logging.INFO, logger="credits_client"):
            async with client.hold(account, 300, ttl=ttl, keepalive=True) as hold:
                # The job has run almost a day: extended to 2.5 s short of its cap, and
                # at the keepalive's next turn a full ttl would pass the cap.
                near = await client.extend_reservation(
                    account, hold.reservation_id, lifetime - datetime.timedelta(seconds=2.5)
                )
                cap = near.extendable_until
                service_clock.advance((cap - service_clock()).total_seconds() - 7)
                target = cap - datetime.timedelta(
                    seconds=FINAL_EXTENSION_MARGIN_SECONDS + FINAL_EXTENSION_SLACK_SECONDS
                )
                for _ in range(int(KEEPALIVE_WAIT_SECONDS_MAX / POLL_SECONDS)):
                    if hold.expires_at >= target:
                        break
                    await asyncio.sleep(POLL_SECONDS)
                assert target <= hold.expires_at <= cap, "extended up to the cap"
                details = await client.get_reservation(account, hold.reservation_id)
                assert details.reservation.expires_at == hold.expires_at
                # The work goes on past the expiry the last full extension had set.
                service_clock.advance(
                    (near.reservation.expires_at - service_clock()).total_seconds() + 0.5
                )
                assert await available_and_reserved(client, account) == (700, 300)
    finally:
        await server.stop()

    assert hold.settled is not None
    assert hold.settled.status is ReservationStatus.CONFIRMED, "the work was paid for"
    capped = [printed(r) for r in caplog.records if "lifetime cap" in r.getMessage()]
    assert len(capped) == 1
    assert hold.reservation_id in capped[0]
    assert account in capped[0]
