"""Rate limits in one process: per caller and account on Reserve (the 50/second default)
and per caller and RPC (from the callers file), answered with RESOURCE_EXHAUSTED,
RetryInfo and QuotaFailure."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from scripts.devcallers import DEV_RPCS
from service import settings
from service.access.callers import ANY_RPC
from tests.access_support import caller_table, detail_of, write_callers
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import (
    RunningServer,
    error_details,
    funded_account,
    new_id,
    open_channel,
    start_server,
)

BURST_CALLS = 100
ALL_RPCS = [ANY_RPC]
BACKEND_RPCS = list(DEV_RPCS["backend"])
BALANCE_LIMIT = 5


@pytest.fixture(scope="module")
async def limited_server(
    database_url: str, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    """The default per-account limit, and a tight per-caller limit on GetBalance."""
    callers = write_callers(
        tmp_path_factory.mktemp("ratelimit") / "callers.toml",
        caller_table(
            "backend",
            BACKEND_RPCS,
            extra_limits=f'GetBalance = "{BALANCE_LIMIT}/minute"',
        ),
        caller_table("ops", ALL_RPCS),
    )
    server = await start_server(
        database_url,
        pki,
        CREDITS_CALLERS_FILE=str(callers),
        CREDITS_RESERVE_RATE_PER_ACCOUNT=settings.RESERVE_RATE_PER_ACCOUNT_DEFAULT,
    )
    yield server
    await server.stop()


@pytest.fixture
async def backend(limited_server: RunningServer, pki: Path) -> AsyncIterator[Stub]:
    async with open_channel(pki, "backend", limited_server.address) as channel:
        yield Stub(channel)


@pytest.fixture
async def ops(limited_server: RunningServer, pki: Path) -> AsyncIterator[Stub]:
    async with open_channel(pki, "ops", limited_server.address) as channel:
        yield Stub(channel)


async def funded(ops: Stub) -> str:
    return await funded_account(ops, 10 * BURST_CALLS)


async def reserve(stub: Stub, account: str) -> grpc.aio.AioRpcError | None:
    request = pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id())
    try:
        await stub.Reserve(request, timeout=T)
    except grpc.aio.AioRpcError as err:
        return err
    return None


def assert_rate_limited(err: grpc.aio.AioRpcError | None, subject: str, limit: str) -> float:
    """The refusal's parts; returns its retry delay in seconds."""
    assert err is not None
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "rate limit exceeded; retry after the delay in RetryInfo"
    assert error_details(err)[0] == "RATE_LIMITED"
    delay = detail_of(err, error_details_pb2.RetryInfo).retry_delay.ToTimedelta()
    violations = detail_of(err, error_details_pb2.QuotaFailure).violations
    assert [(v.subject, v.description) for v in violations] == [(subject, limit)]
    seconds: float = delay.total_seconds()
    return seconds


async def test_a_burst_on_one_account_is_limited_and_others_are_not(
    backend: Stub, ops: Stub
) -> None:
    hot, other = await funded(ops), await funded(ops)
    results = await asyncio.gather(*(reserve(backend, hot) for _ in range(BURST_CALLS)))
    passed = [r for r in results if r is None]
    limited = [r for r in results if r is not None]
    # 50 a second; a burst that straddles a window edge may pass a few more.
    assert 45 <= len(passed) <= 60, [r.code() for r in limited]
    delay = assert_rate_limited(limited[0], f"account:{hot}", "50 per 1 second")
    assert 0 < delay <= 1
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in limited)

    assert await reserve(backend, other) is None
    # The delay is honest: after it, the hot account may reserve again.
    await asyncio.sleep(delay)
    assert await reserve(backend, hot) is None


async def test_one_caller_spending_an_accounts_limit_leaves_another_callers_alone(
    backend: Stub, ops: Stub
) -> None:
    hot = await funded(ops)
    results = await asyncio.gather(*(reserve(backend, hot) for _ in range(BURST_CALLS)))
    assert any(r is not None for r in results), "the burst did not reach the limit"
    assert await reserve(ops, hot) is None


def rate_limited_count(caller: str, rpc: str) -> float:
    labels = {"caller": caller, "method": rpc}
    return REGISTRY.get_sample_value("credits_rate_limited_total", labels) or 0.0


async def test_a_caller_is_limited_per_rpc(backend: Stub, ops: Stub) -> None:
    counted_before = rate_limited_count("backend", "GetBalance")
    for _ in range(BALANCE_LIMIT):
        await backend.GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await backend.GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
    delay = assert_rate_limited(caught.value, "caller:backend/GetBalance", "5 per 1 minute")
    assert 0 < delay <= 60
    assert rate_limited_count("backend", "GetBalance") == counted_before + 1
    # Another RPC of the same caller, and the same RPC of another caller, go on.
    await backend.ListUsage(pb.ListUsageRequest(account_id=new_id()), timeout=T)
    await ops.GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
