"""GetUsageSummary through the real server: per job type, the reservations that finished
in a window (confirmed, released, expired once settled), credits captured and the success
rate in thousandths, for one account or every account; a window that is missing, reversed
or too long is refused, and backend callers may not read it."""

import datetime

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import MovableClock, error_details, funded_account, new_id


def _request(
    since: datetime.datetime | None, until: datetime.datetime | None, account: str = ""
) -> pb.GetUsageSummaryRequest:
    request = pb.GetUsageSummaryRequest(account_id=account)
    if since is not None:
        request.since.FromDatetime(since)
    if until is not None:
        request.until.FromDatetime(until)
    return request


def _of(response: pb.GetUsageSummaryResponse, job_type: str) -> pb.JobTypeUsage | None:
    return next((u for u in response.job_types if u.job_type == job_type), None)


async def test_summary_counts_each_outcome_captured_credits_and_the_success_rate(
    ops: Stub, backend: Stub, gateway: Stub, clock: MovableClock
) -> None:
    account = await funded_account(gateway, 1000)
    job_type = new_id("render")
    started = clock()

    async def reserve(ttl_seconds: int = 900) -> str:
        request = pb.ReserveRequest(
            account_id=account, amount=100, idempotency_key=new_id("hold"), job_type=job_type
        )
        request.ttl.FromSeconds(ttl_seconds)
        return str((await backend.Reserve(request, timeout=T)).reservation.reservation_id)

    confirmed, released = await reserve(), await reserve()
    await reserve(1)  # left to expire
    await backend.Confirm(
        pb.ConfirmRequest(account_id=account, reservation_id=confirmed, amount=60), timeout=T
    )
    await backend.Release(pb.ReleaseRequest(account_id=account, reservation_id=released), timeout=T)
    clock.advance(1.2)
    # A read settles the expired one (the test server runs no sweeper).
    await backend.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)

    window = (started, clock() + datetime.timedelta(seconds=1))

    for scope in (account, ""):  # one account's, every account's
        usage = _of(await ops.GetUsageSummary(_request(*window, scope), timeout=T), job_type)
        assert usage is not None
        assert (usage.confirmed, usage.released, usage.expired) == (1, 1, 1)
        assert usage.captured_amount == 60
        assert usage.success_per_mille == 333

    before = (started - datetime.timedelta(hours=1), started)
    assert _of(await ops.GetUsageSummary(_request(*before, account), timeout=T), job_type) is None


@pytest.mark.parametrize(
    ("since_hours", "until_hours", "field"),
    [(None, 1, "since"), (0, None, "until"), (1, 0, "until"), (0, 32 * 24, "until")],
)
async def test_a_missing_reversed_or_too_long_window_is_refused(
    ops: Stub, since_hours: int | None, until_hours: int | None, field: str
) -> None:
    base = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def at(hours: int | None) -> datetime.datetime | None:
        return None if hours is None else base + datetime.timedelta(hours=hours)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ops.GetUsageSummary(_request(at(since_hours), at(until_hours)), timeout=T)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(refused.value) == ("INVALID_REQUEST", [field])


async def test_backend_callers_may_not_read_the_summary(backend: Stub) -> None:
    now = datetime.datetime.now(datetime.UTC)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await backend.GetUsageSummary(_request(now - datetime.timedelta(hours=1), now), timeout=T)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
