"""Deadlines and retries against real servers: a call retried while the service went
away and came back is applied once (one key on every attempt); a per-call deadline, the
client's default deadline and the total retry budget each bound a call."""

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from credits_client import (
    NO_RETRY,
    CreditsClient,
    DeadlineExceeded,
    RetryPolicy,
    Unavailable,
)
from tests.client.conftest import ClientFactory, LockedAccount, funded
from tests.support import free_port, start_server

# The service stays away for a few of the client's reconnect backoffs.
DOWN_SECONDS = 1.5
SHORT_DEADLINE_SECONDS = 0.3
# Scheduling on a loaded two-core machine: how late a deadline may fire.
LATENESS_SECONDS_MAX = 1.5
# How much later than the client's the service's deadline may end on such a machine.
SERVER_DEADLINE_LAG_SECONDS_MAX = 1.0


async def test_a_call_retried_across_a_restart_of_the_service_is_applied_once(
    database_url: str,
    pki: Path,
    make_client: ClientFactory,
    ops_client: CreditsClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = await funded(ops_client, 1000)
    port = free_port()
    server = await start_server(database_url, pki, port)
    policy = RetryPolicy(attempts_max=100, budget_seconds=30)
    client = make_client("backend", server.address, retry=policy)
    try:
        assert (await client.balance(account)).available == 1000  # connected once
        await server.stop()

        with caplog.at_level(logging.INFO, logger="credits_client"):
            call = asyncio.create_task(client.reserve(account, 300))
            await asyncio.sleep(DOWN_SECONDS)
            assert not call.done()
            server = await start_server(database_url, pki, port)
            reserved = await call

        retried = [r for r in caplog.records if r.getMessage().startswith("credits call retried: ")]
        assert retried, "the call failed while the service was away, and was sent again"
        keys = {r.__dict__["idempotency_key"] for r in retried}
        assert keys == {reserved.idempotency_key}
        # The ids are in the message: a plain logging.basicConfig shows them.
        for record in retried:
            assert f"account_id={account}" in record.getMessage()
            assert f"idempotency_key={reserved.idempotency_key}" in record.getMessage()

        # The response of an attempt that was applied can be lost on the way back: the
        # caller then sends the call again with the key, which is applied once.
        again = await client.reserve(account, 300, idempotency_key=reserved.idempotency_key)
        assert again.reservation_id == reserved.reservation_id
        balance = await client.balance(account)
        assert (balance.available, balance.reserved) == (700, 300)
        assert [r.reservation_id async for r in client.usage(account)] == [reserved.reservation_id]
    finally:
        await server.stop()


async def test_a_per_call_deadline_is_honoured(
    ops_client: CreditsClient, make_client: ClientFactory, admin_engine: AsyncEngine
) -> None:
    account = await funded(ops_client, 1000)
    client = make_client("backend", retry=NO_RETRY)

    async with LockedAccount(admin_engine, account):
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as raised:
            await client.reserve(account, 10, timeout_seconds=SHORT_DEADLINE_SECONDS)
        elapsed = time.monotonic() - started
        # gRPC sends the deadline as a duration, so the service's copy of it ends later
        # than the client's by the request's time in transit: the lock is held until the
        # service's deadline has surely passed too, so the Reserve cannot go on after it.
        await asyncio.sleep(SERVER_DEADLINE_LAG_SECONDS_MAX)

    # The service answers a little before the deadline, which it knows too.
    assert SHORT_DEADLINE_SECONDS / 2 <= elapsed < SHORT_DEADLINE_SECONDS + LATENESS_SECONDS_MAX
    assert raised.value.idempotency_key is not None
    assert (await client.balance(account)).reserved == 0  # the work was stopped


async def test_the_clients_default_deadline_is_honoured(
    ops_client: CreditsClient, make_client: ClientFactory, admin_engine: AsyncEngine
) -> None:
    account = await funded(ops_client, 1000)
    client = make_client("backend", timeout_seconds=SHORT_DEADLINE_SECONDS, retry=NO_RETRY)

    async with LockedAccount(admin_engine, account):
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.confirm(account, "00000000-0000-4000-8000-000000000000")
        elapsed = time.monotonic() - started

    # The service answers a little before the deadline, which it knows too.
    assert SHORT_DEADLINE_SECONDS / 2 <= elapsed < SHORT_DEADLINE_SECONDS + LATENESS_SECONDS_MAX


async def test_retries_stop_at_the_total_budget(
    ops_client: CreditsClient, make_client: ClientFactory, admin_engine: AsyncEngine
) -> None:
    account = await funded(ops_client, 1000)
    budget_seconds = 1.2
    policy = RetryPolicy(attempts_max=100, budget_seconds=budget_seconds)
    client = make_client("backend", timeout_seconds=SHORT_DEADLINE_SECONDS, retry=policy)

    async with LockedAccount(admin_engine, account):
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as raised:
            await client.reserve(account, 10)
        elapsed = time.monotonic() - started

    assert raised.value.attempts >= 2, "a deadline that ran out is retried"
    assert elapsed < budget_seconds + LATENESS_SECONDS_MAX
    assert (await client.balance(account)).reserved == 0


async def test_an_address_where_nothing_listens_is_unavailable_after_the_attempts(
    make_client: ClientFactory,
) -> None:
    policy = RetryPolicy(attempts_max=3, backoff_initial_seconds=0.05)
    client = make_client("backend", f"127.0.0.1:{free_port()}", retry=policy)

    with pytest.raises(Unavailable) as raised:
        await client.balance("acct")

    assert type(raised.value) is Unavailable
    assert (raised.value.reason, raised.value.request_id) == ("", "")
    assert raised.value.attempts == 3
