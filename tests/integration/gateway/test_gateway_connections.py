"""Sockets that never finish a request cannot keep Stripe out: deadlines for the head
and the body, a cap per peer, and a budget for unfinished connections that newcomers
take from the oldest -- through a real uvicorn server and raw TCP connections."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from gateway.server import CONNECTION_LIMITS
from tests.integration.gateway.deliveries import (
    BalanceReader,
    Purchase,
    RunningGateway,
    start_gateway,
)
from tests.support import RunningServer

# Headers that promise a body which never comes.
HALF_SENT_HEAD = (
    b"POST /stripe/webhook HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
)
# Attackers on loopback addresses of their own, so the per-peer cap is not what saves
# the genuine deliveries from 127.0.0.1: 100 sockets each, above the cap of one peer.
ATTACKER_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
HALF_SENT_CONNECTIONS = 100
IDLE_CONNECTIONS = 200
GENUINE_DELIVERIES = 5
# What "promptly" means for a delivery to a local gateway and service.
GENUINE_ANSWER_SECONDS_MAX = 3.0
# Short deadlines for the tests that wait for them.
SHORT_TIMEOUT_SECONDS = 1.0
# How late a cut may come: the event loop's timer plus the test's own polling.
CUT_SLACK_SECONDS = 2.0
SHORT_LIMITS = replace(
    CONNECTION_LIMITS,
    head_timeout_seconds=SHORT_TIMEOUT_SECONDS,
    body_timeout_seconds=SHORT_TIMEOUT_SECONDS,
    peer_connections_max=2,
    unfinished_connections_max=3,
)

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def short_gateway(credits_server: RunningServer, pki: Path) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(credits_server.address, pki, SHORT_LIMITS)
    yield running
    await running.stop()


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


async def connect(gateway: RunningGateway, source: str = "127.0.0.1") -> Connection:
    return await asyncio.open_connection("127.0.0.1", port_of(gateway), local_addr=(source, 0))


async def closed_after(reader: asyncio.StreamReader, wait_seconds: float) -> float | None:
    """Seconds until the server closed the connection, or None if it is still open
    after `wait_seconds`. Whatever the server sent first is read and dropped."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(wait_seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - started


def close_all(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.transport.abort()


async def test_300_idle_or_half_sent_connections_do_not_keep_genuine_deliveries_out(
    gateway_server: RunningGateway, balance: BalanceReader
) -> None:
    held: list[Connection] = []
    try:
        for index in range(HALF_SENT_CONNECTIONS + IDLE_CONNECTIONS):
            connection = await connect(
                gateway_server, ATTACKER_ADDRESSES[index % len(ATTACKER_ADDRESSES)]
            )
            if index < HALF_SENT_CONNECTIONS:
                connection[1].write(HALF_SENT_HEAD + b'{"id": ')
                await connection[1].drain()
            held.append(connection)
        await asyncio.sleep(0.2)  # every attacker socket is accepted and counted

        # A client of its own: a fresh connection per delivery, as Stripe makes them.
        async with httpx.AsyncClient(timeout=GENUINE_ANSWER_SECONDS_MAX) as stripe:
            for _ in range(GENUINE_DELIVERIES):
                purchase = Purchase()
                started = time.monotonic()
                response = await gateway_server.post(
                    stripe, purchase.event("checkout.session.completed")
                )
                assert response.status_code == 200
                assert time.monotonic() - started < GENUINE_ANSWER_SECONDS_MAX
                assert await balance(purchase.account) == 1000
    finally:
        close_all(held)


async def test_a_half_sent_body_is_cut_off_after_its_deadline(
    short_gateway: RunningGateway,
) -> None:
    reader, writer = await connect(short_gateway)
    writer.write(HALF_SENT_HEAD + b'{"id": "evt_')
    await writer.drain()

    elapsed = await closed_after(reader, SHORT_TIMEOUT_SECONDS + CUT_SLACK_SECONDS)

    assert elapsed is not None, "the half-sent body was not cut off"
    assert elapsed >= SHORT_TIMEOUT_SECONDS * 0.9
    samples = [s for m in short_gateway.metrics.webhooks.collect() for s in m.samples]
    assert any(s.labels["outcome"] == "client_disconnected" for s in samples)


@pytest.mark.parametrize("sent", [b"", b"POST /stripe/webhook HTTP/1.1\r\nHost: g"])
async def test_a_head_never_finished_is_cut_off_after_its_deadline(
    short_gateway: RunningGateway, sent: bytes
) -> None:
    reader, writer = await connect(short_gateway)
    started = time.monotonic()
    # A trickle: one byte at a time does not move the deadline.
    for byte in sent:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(SHORT_TIMEOUT_SECONDS / 2 / len(sent))

    elapsed = await closed_after(reader, SHORT_TIMEOUT_SECONDS + CUT_SLACK_SECONDS)

    assert elapsed is not None, "the unfinished head was not cut off"
    assert time.monotonic() - started >= SHORT_TIMEOUT_SECONDS * 0.9
    assert time.monotonic() - started <= SHORT_TIMEOUT_SECONDS + CUT_SLACK_SECONDS


async def test_a_peer_over_its_cap_is_closed_at_once_and_others_are_served(
    short_gateway: RunningGateway, http: httpx.AsyncClient
) -> None:
    held = [await connect(short_gateway, "127.0.0.2") for _ in range(2)]
    try:
        extra_reader, _ = await connect(short_gateway, "127.0.0.2")
        assert await closed_after(extra_reader, CUT_SLACK_SECONDS) is not None
        assert (await http.get(short_gateway.url + "/healthz")).status_code == 200
    finally:
        close_all(held)


async def test_when_too_many_connections_are_unfinished_the_oldest_is_closed(
    short_gateway: RunningGateway,
) -> None:
    oldest = await connect(short_gateway, "127.0.0.2")
    await asyncio.sleep(0.05)  # accepted first
    sources = ("127.0.0.3", "127.0.0.4", "127.0.0.5")
    newer = [await connect(short_gateway, source) for source in sources]
    try:
        assert await closed_after(oldest[0], SHORT_TIMEOUT_SECONDS / 2) is not None
        for reader, _ in newer:
            assert await closed_after(reader, 0.1) is None
    finally:
        close_all([oldest, *newer])
