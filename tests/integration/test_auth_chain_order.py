"""The interceptors run in a fixed order, outermost first: sanitize errors →
authenticate → authorize → rate-limit (STYLE point 8)."""

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from scripts.devpki import issue
from service.access.authentication import Authenticate
from service.access.authorization import Authorize
from service.access.interceptors import REQUEST_ID_HEADER, SanitizeErrors
from service.access.ratelimit import RateLimit
from service.rpc.server import interceptor_chain
from tests.access_support import dev_ca, tls_channel
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, error_details, new_id, open_channel, start_server

ACCOUNT_LIMIT = 3
REFUSED_CALLS = 5


@pytest.fixture(scope="module")
async def strict_server(database_url: str, pki: Path) -> AsyncIterator[RunningServer]:
    server = await start_server(
        database_url, pki, CREDITS_RESERVE_RATE_PER_ACCOUNT=f"{ACCOUNT_LIMIT}/minute"
    )
    yield server
    await server.stop()


async def reserve_code(stub: Stub, account: str) -> grpc.StatusCode:
    request = pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id())
    try:
        await stub.Reserve(request, timeout=T)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_the_chain_build_server_installs_is_in_order(strict_server: RunningServer) -> None:
    built = strict_server.built
    chain = interceptor_chain(strict_server.settings, built.limiter, built.callers)
    assert [type(i) for i in chain] == [SanitizeErrors, Authenticate, Authorize, RateLimit]


async def test_an_unknown_caller_learns_nothing_about_permissions(
    strict_server: RunningServer, pki: Path
) -> None:
    stranger = issue(dev_ca(pki), "mallory")
    async with tls_channel(pki, strict_server.address, stranger) as channel:
        grant = pb.GrantRequest(account_id=new_id(), amount=1, idempotency_key=new_id())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await Stub(channel).Grant(grant, timeout=T)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_refused_calls_spend_no_rate_limit(strict_server: RunningServer, pki: Path) -> None:
    account = new_id()
    stranger = issue(dev_ca(pki), "mallory")
    async with tls_channel(pki, strict_server.address, stranger) as channel:
        for _ in range(REFUSED_CALLS):
            assert await reserve_code(Stub(channel), account) == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(pki, "gateway", strict_server.address) as channel:
        for _ in range(REFUSED_CALLS):
            assert await reserve_code(Stub(channel), account) == grpc.StatusCode.PERMISSION_DENIED
    async with open_channel(pki, "backend", strict_server.address) as channel:
        backend = Stub(channel)
        # The account has no credits: what matters is that the limiter let the calls in.
        for _ in range(ACCOUNT_LIMIT):
            assert await reserve_code(backend, account) == grpc.StatusCode.FAILED_PRECONDITION
        assert await reserve_code(backend, account) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_failure_inside_the_rate_limiter_is_sanitized(
    strict_server: RunningServer, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("EVALSHA failed on redis://:hunter2@10.1.2.3:6379/0")

    monkeypatch.setattr(strict_server.built.limiter, "hit", broken)
    async with open_channel(pki, "backend", strict_server.address) as channel:
        call = Stub(channel).GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        request_id = dict(await call.initial_metadata())[REQUEST_ID_HEADER]
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == f"internal error (ref {request_id})"
    assert error_details(caught.value)[0] == "INTERNAL"
    # Nothing of the failure's text travels, not even inside the rich status.
    for _, value in caught.value.trailing_metadata():
        assert "hunter2" not in (value.decode("latin-1") if isinstance(value, bytes) else value)
