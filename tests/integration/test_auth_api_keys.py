"""Identity from shared secrets (`x-api-key`): a tls-mode server, a rotation of a secret,
and the development-only insecure mode."""

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from scripts.devcallers import api_key_path
from service.access.callers import API_KEY_CHARS_MIN
from tests.access_support import caller_table, tls_channel, with_key, write_callers
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, error_details, new_id, open_channel, start_server

OLD_KEY = secrets.token_urlsafe(32)
NEW_KEY = secrets.token_urlsafe(32)
GATEWAY_KEY = secrets.token_urlsafe(32)
# A weak secret configured by mistake: it must never authenticate anyone.
SHORT_KEY = "s" * (API_KEY_CHARS_MIN - 1)
BACKEND_RPCS = ["Reserve", "Confirm", "Release", "GetBalance", "ListUsage"]


def rotation_callers(path: Path, *backend_keys: str) -> Path:
    return write_callers(
        path,
        caller_table("backend", BACKEND_RPCS, api_keys=backend_keys),
        caller_table("gateway", ["Grant", "Revoke", "GetBalance"], api_keys=(GATEWAY_KEY,)),
        caller_table("weak", ["GetBalance"], api_keys=(SHORT_KEY,)),
    )


@pytest.fixture(scope="module")
async def tls_server(
    database_url: str, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    callers = rotation_callers(tmp_path_factory.mktemp("tls") / "callers.toml", OLD_KEY, NEW_KEY)
    server = await start_server(
        database_url, pki, CREDITS_AUTH_MODE="tls", CREDITS_CALLERS_FILE=str(callers)
    )
    yield server
    await server.stop()


@pytest.fixture
async def stub(tls_server: RunningServer, pki: Path) -> AsyncIterator[Stub]:
    async with tls_channel(pki, tls_server.address) as channel:
        yield Stub(channel)


async def balance_code(
    stub: Stub, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, str]:
    try:
        await stub.GetBalance(
            pb.GetBalanceRequest(account_id=new_id()), metadata=metadata, timeout=T
        )
    except grpc.aio.AioRpcError as err:
        return err.code(), error_details(err)[0]
    return grpc.StatusCode.OK, ""


UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


async def test_both_secrets_of_a_rotation_are_valid(stub: Stub) -> None:
    assert await balance_code(stub, with_key(OLD_KEY)) == (grpc.StatusCode.OK, "")
    assert await balance_code(stub, with_key(NEW_KEY)) == (grpc.StatusCode.OK, "")


async def test_a_missing_key_is_unauthenticated(stub: Stub) -> None:
    assert await balance_code(stub) == UNAUTHENTICATED


async def test_a_wrong_key_is_unauthenticated(stub: Stub) -> None:
    assert await balance_code(stub, with_key(secrets.token_urlsafe(32))) == UNAUTHENTICATED
    # Nearly right is still wrong.
    assert await balance_code(stub, with_key(OLD_KEY[:-1] + "#")) == UNAUTHENTICATED


async def test_a_short_secret_never_authenticates(stub: Stub) -> None:
    assert await balance_code(stub, with_key(SHORT_KEY)) == UNAUTHENTICATED


async def test_two_keys_in_one_call_are_unauthenticated(stub: Stub) -> None:
    assert await balance_code(stub, with_key(OLD_KEY) + with_key(NEW_KEY)) == UNAUTHENTICATED


async def test_the_key_names_the_caller_and_its_permissions(stub: Stub) -> None:
    request = pb.ReserveRequest(account_id=new_id(), amount=1, idempotency_key=new_id())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Reserve(request, metadata=with_key(GATEWAY_KEY), timeout=T)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_keys_never_reach_the_log(stub: Stub, caplog: pytest.LogCaptureFixture) -> None:
    wrong = secrets.token_urlsafe(32)
    with caplog.at_level(logging.DEBUG):
        await balance_code(stub, with_key(wrong))
        await balance_code(stub, with_key(OLD_KEY))
    assert any(r.getMessage() == "authentication failed" for r in caplog.records)
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert wrong not in logged
    assert OLD_KEY not in logged


async def test_health_needs_no_key(tls_server: RunningServer, pki: Path) -> None:
    async with tls_channel(pki, tls_server.address) as channel:
        checked = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=T
        )
    assert checked.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_client_certificate_is_not_a_credential_in_tls_mode(
    tls_server: RunningServer, pki: Path
) -> None:
    async with open_channel(pki, "backend", tls_server.address) as channel:
        assert await balance_code(Stub(channel)) == UNAUTHENTICATED


async def test_a_retired_secret_stops_working(database_url: str, pki: Path, tmp_path: Path) -> None:
    """The rotation's last step: the callers file keeps only the new secret."""
    callers = rotation_callers(tmp_path / "callers.toml", NEW_KEY)
    server = await start_server(
        database_url, pki, CREDITS_AUTH_MODE="tls", CREDITS_CALLERS_FILE=str(callers)
    )
    try:
        async with tls_channel(pki, server.address) as channel:
            assert await balance_code(Stub(channel), with_key(OLD_KEY)) == UNAUTHENTICATED
            assert await balance_code(Stub(channel), with_key(NEW_KEY)) == (
                grpc.StatusCode.OK,
                "",
            )
    finally:
        await server.stop()


async def test_insecure_mode_in_development_on_loopback_still_authenticates(
    database_url: str, pki: Path
) -> None:
    server = await start_server(
        database_url,
        pki,
        CREDITS_ENV="development",
        CREDITS_AUTH_MODE="insecure",
        CREDITS_ALLOW_INSECURE="1",
    )
    try:
        backend_key = api_key_path(pki / "callers.toml", "backend").read_text().strip()
        async with grpc.aio.insecure_channel(server.address) as channel:
            assert await balance_code(Stub(channel), with_key(backend_key)) == (
                grpc.StatusCode.OK,
                "",
            )
            assert await balance_code(Stub(channel)) == UNAUTHENTICATED
    finally:
        await server.stop()
