"""A typed exception for every failure a client can provoke, against real servers:
the class of its ErrorInfo reason, with its code, the request id of the call, the key
it sent, the BadRequest fields and the RetryInfo delay."""

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from credits_client import (
    NO_RETRY,
    AccountCreditsLimit,
    AccountFrozen,
    CaptureExceedsReservation,
    CreditsClient,
    CreditsError,
    DatabaseUnavailable,
    ExternalRefExists,
    GrantNotFound,
    IdempotencyKeyReused,
    InsufficientCredits,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    RateLimitUnavailable,
    ReservationLifetimeExceeded,
    ReservationNotActive,
    ReservationNotFound,
    RetryPolicy,
    SignupBonusExists,
    Unauthenticated,
    Unavailable,
)
from scripts.devcallers import api_key_path
from service.ledger import limits
from tests.client.conftest import ClientFactory, funded
from tests.support import RunningServer, new_id, start_server

MISSING_ID = "00000000-0000-4000-8000-000000000000"
# Grants of the largest allowed amount that fill an account to its limit.
GRANTS_TO_FILL_AN_ACCOUNT = limits.ACCOUNT_CREDITS_MAX // limits.AMOUNT_MAX_LIMIT
CONCURRENT_GRANTS = 50
# Three times what a 2/second limit lets through at once.
RESERVES_OVER_THE_LIMIT = 6


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def assert_from_the_service(error: CreditsError, code: grpc.StatusCode, reason: str) -> None:
    assert (error.code, error.reason) == (code, reason)
    assert len(error.request_id) == 32, "every answer of the service names its request id"
    assert error.reason in str(error)
    assert error.request_id in str(error)


async def test_invalid_fields_are_invalid_request_naming_each_field(
    backend_client: CreditsClient,
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await backend_client.reserve("bad account!", 0, job_id="x" * 129)

    error = raised.value
    assert_from_the_service(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert sorted(v.field for v in error.field_violations) == ["account_id", "amount", "job_id"]
    assert all(v.description for v in error.field_violations)
    assert error.idempotency_key is not None
    assert error.attempts == 1  # not retryable


async def test_insufficient_credits(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 100)

    with pytest.raises(InsufficientCredits) as raised:
        await backend_client.reserve(account, 101, idempotency_key="job-too-big")

    assert_from_the_service(
        raised.value, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS"
    )
    assert raised.value.idempotency_key == "job-too-big"


async def test_a_frozen_account_is_account_frozen_until_unfrozen(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 100)
    frozen = await ops_client.update_account_settings(account, frozen=True, reason="fraud")
    assert (frozen.settings.frozen, frozen.settings_version) == (True, 1)
    assert (await backend_client.get_account(account)) == frozen

    with pytest.raises(AccountFrozen) as raised:
        await backend_client.reserve(account, 1)

    assert_from_the_service(raised.value, grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN")
    thawed = await ops_client.update_account_settings(account, frozen=False)
    assert (thawed.settings.frozen, thawed.settings_updated_by) == (False, "ops")
    assert (await backend_client.reserve(account, 1)).amount == 1


async def test_reservation_failures(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    reserved = await backend_client.reserve(account, 300)

    with pytest.raises(CaptureExceedsReservation) as exceeds:
        await backend_client.confirm(account, reserved.reservation_id, 301)
    await backend_client.release(account, reserved.reservation_id)
    with pytest.raises(ReservationNotActive) as not_active:
        await backend_client.confirm(account, reserved.reservation_id)
    with pytest.raises(ReservationNotFound) as not_found:
        await backend_client.release(account, MISSING_ID)
    with pytest.raises(ReservationNotFound):  # another account's reservation: not found
        await backend_client.release(new_id(), reserved.reservation_id)

    precondition = grpc.StatusCode.FAILED_PRECONDITION
    assert_from_the_service(exceeds.value, precondition, "CAPTURE_EXCEEDS_RESERVATION")
    assert_from_the_service(not_active.value, precondition, "RESERVATION_NOT_ACTIVE")
    assert_from_the_service(not_found.value, grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    assert not_found.value.idempotency_key is None  # Release carries no key


async def test_grant_failures(ops_client: CreditsClient) -> None:
    account = new_id()
    payment = new_id("pi")
    await ops_client.grant(account, 100, source="signup_bonus")
    granted = await ops_client.grant(account, 100, source="purchase", external_ref=payment)

    with pytest.raises(SignupBonusExists) as bonus:
        await ops_client.grant(account, 100, source="signup_bonus")
    with pytest.raises(ExternalRefExists) as ref:
        await ops_client.grant(account, 100, source="purchase", external_ref=payment)
    with pytest.raises(IdempotencyKeyReused) as reused:
        await ops_client.grant(
            account, 999, source="purchase", idempotency_key=granted.idempotency_key
        )
    with pytest.raises(GrantNotFound) as not_found:
        await ops_client.revoke(account, grant_id=MISSING_ID)

    exists = grpc.StatusCode.ALREADY_EXISTS
    assert_from_the_service(bonus.value, exists, "SIGNUP_BONUS_EXISTS")
    assert_from_the_service(ref.value, exists, "EXTERNAL_REF_EXISTS")
    assert_from_the_service(reused.value, exists, "IDEMPOTENCY_KEY_REUSED")
    assert reused.value.idempotency_key == granted.idempotency_key
    assert_from_the_service(not_found.value, grpc.StatusCode.NOT_FOUND, "GRANT_NOT_FOUND")


async def test_a_caller_without_the_rpc_is_permission_denied(
    backend_client: CreditsClient,
) -> None:
    with pytest.raises(PermissionDenied) as raised:
        await backend_client.grant(new_id(), 100, source="purchase")

    assert_from_the_service(raised.value, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


@pytest.fixture(scope="module")
async def tls_server(database_url: str, pki: Path) -> AsyncIterator[RunningServer]:
    """TLS with API keys: the development callers' keys are under `<pki>/api-keys/`."""
    server = await start_server(database_url, pki, CREDITS_AUTH_MODE="tls")
    yield server
    await server.stop()


async def test_an_api_key_is_a_credential_and_a_wrong_one_is_unauthenticated(
    tls_server: RunningServer, pki: Path
) -> None:
    key = api_key_path(pki / "callers.toml", "backend").read_text().strip()
    account = new_id()
    async with CreditsClient(tls_server.address, ca_file=pki / "ca.pem", api_key=key) as good:
        assert (await good.balance(account)).available == 0
    wrong = CreditsClient(tls_server.address, ca_file=pki / "ca.pem", api_key=key[::-1])
    async with wrong:
        with pytest.raises(Unauthenticated) as raised:
            await wrong.balance(account)

    assert_from_the_service(raised.value, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


async def reserve_until_refused(client: CreditsClient, account: str) -> None:
    # The first passes; within the minute the limit refuses one of the next two (two,
    # should the first land at the end of the limiter's window).
    for _ in range(3):
        await client.reserve(account, 10)


async def test_a_rate_limit_is_rate_limited_with_the_delay_to_wait(
    database_url: str, pki: Path, make_client: ClientFactory, ops_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    server = await start_server(database_url, pki, CREDITS_RESERVE_RATE_PER_ACCOUNT="1/minute")
    try:
        client = make_client("backend", server.address, retry=NO_RETRY)
        with pytest.raises(RateLimited) as raised:
            await reserve_until_refused(client, account)
    finally:
        await server.stop()

    error = raised.value
    assert_from_the_service(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert error.retry_delay_seconds is not None
    assert 0 < error.retry_delay_seconds <= 60
    assert error.attempts == 1


async def test_calls_over_a_rate_limit_wait_what_retry_info_says_and_succeed(
    database_url: str,
    pki: Path,
    make_client: ClientFactory,
    ops_client: CreditsClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = await funded(ops_client, 1000)
    server = await start_server(database_url, pki, CREDITS_RESERVE_RATE_PER_ACCOUNT="2/second")
    try:
        client = make_client("backend", server.address)
        with caplog.at_level(logging.INFO, logger="credits_client"):
            for _ in range(RESERVES_OVER_THE_LIMIT):
                await client.reserve(account, 10)
    finally:
        await server.stop()

    retried = [r for r in caplog.records if r.getMessage().startswith("credits call retried: ")]
    assert retried
    assert {r.__dict__["reason"] for r in retried} == {"RATE_LIMITED"}
    assert (await ops_client.balance(account)).reserved == 10 * RESERVES_OVER_THE_LIMIT


async def test_an_unreachable_database_is_database_unavailable_after_the_retries(
    pki: Path, make_client: ClientFactory
) -> None:
    server = await start_server(f"postgresql://credits@127.0.0.1:{closed_port()}/credits", pki)
    try:
        policy = RetryPolicy(attempts_max=3, backoff_initial_seconds=0.05)
        client = make_client("backend", server.address, retry=policy)
        with pytest.raises(DatabaseUnavailable) as raised:
            await client.reserve(new_id(), 10)
    finally:
        await server.stop()

    assert isinstance(raised.value, Unavailable)
    assert_from_the_service(raised.value, grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
    assert raised.value.attempts == 3


async def test_an_unreachable_rate_limit_store_is_rate_limit_unavailable(
    database_url: str, pki: Path, make_client: ClientFactory
) -> None:
    redis_url = f"redis://127.0.0.1:{closed_port()}/0"
    server = await start_server(database_url, pki, CREDITS_REDIS_URL=redis_url)
    try:
        client = make_client("backend", server.address, retry=NO_RETRY)
        with pytest.raises(RateLimitUnavailable) as raised:
            await client.balance(new_id())
    finally:
        await server.stop()

    code = grpc.StatusCode.UNAVAILABLE
    assert_from_the_service(raised.value, code, "RATE_LIMIT_UNAVAILABLE")


async def test_an_account_full_to_its_limit_is_account_credits_limit(
    database_url: str, pki: Path, make_client: ClientFactory
) -> None:
    server = await start_server(database_url, pki, CREDITS_AMOUNT_MAX=str(limits.AMOUNT_MAX_LIMIT))
    try:
        client = make_client("ops", server.address)
        account = new_id()
        gate = asyncio.Semaphore(CONCURRENT_GRANTS)

        async def grant() -> None:
            async with gate:
                await client.grant(account, limits.AMOUNT_MAX_LIMIT, source="adjustment")

        await asyncio.gather(*(grant() for _ in range(GRANTS_TO_FILL_AN_ACCOUNT)))
        with pytest.raises(AccountCreditsLimit) as raised:
            await client.grant(account, 1, source="adjustment")
    finally:
        await server.stop()

    code = grpc.StatusCode.FAILED_PRECONDITION
    assert_from_the_service(raised.value, code, "ACCOUNT_CREDITS_LIMIT")


async def test_an_extension_past_the_lifetime_cap_is_reservation_lifetime_exceeded(
    database_url: str, pki: Path, make_client: ClientFactory, ops_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    cap = str(int(limits.RESERVATION_TTL_MAX.total_seconds()))
    server = await start_server(database_url, pki, CREDITS_RESERVATION_LIFETIME_MAX_SECONDS=cap)
    try:
        client = make_client("backend", server.address)
        reserved = await client.reserve(account, 10)
        with pytest.raises(ReservationLifetimeExceeded) as raised:
            # Now plus the longest ttl is past creation plus a cap of that same length.
            await client.extend_reservation(
                account, reserved.reservation_id, limits.RESERVATION_TTL_MAX
            )
    finally:
        await server.stop()

    code = grpc.StatusCode.FAILED_PRECONDITION
    assert_from_the_service(raised.value, code, "RESERVATION_LIFETIME_EXCEEDED")
