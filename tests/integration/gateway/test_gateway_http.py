"""The HTTP surface through a real uvicorn server: signatures, limits, routes, headers."""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import SECURITY_HEADERS, WEBHOOK_BODY_BYTES_MAX
from tests.integration.gateway.deliveries import (
    ROTATED_SECRET,
    SECRET,
    BalanceReader,
    Purchase,
    RunningGateway,
    sign,
)

TWO_MIB = 2 * 1024 * 1024


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name


@pytest.mark.parametrize(
    "case", ["tampered", "wrong_secret", "stale", "missing", "garbled", "non_ascii"]
)
async def test_a_delivery_not_signed_by_stripe_is_400_and_calls_nothing(
    gateway_server: RunningGateway,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    purchase: Purchase,
    case: str,
) -> None:
    body = purchase.event("checkout.session.completed")
    signature: str | bytes | None = sign(body)
    if case == "tampered":  # signed, then the package swapped for the bigger one
        body = body.replace(b'"credits_1000"', b'"credits_5000"')
    elif case == "wrong_secret":
        signature = sign(body, "whsec_an_attacker_guess_0123456789")
    elif case == "stale":
        signature = sign(body, timestamp=int(time.time()) - 301)
    elif case == "missing":
        signature = None
    elif case == "non_ascii":  # a valid signature with one byte no Stripe header has
        signature = sign(body).encode().replace(b",v1=", b",v1=\xff", 1)
    else:
        signature = "t=now,v1=" + "0" * 64
    calls_before = gateway_server.metrics.service_calls_total()

    response = await gateway_server.post(http, body, signature)

    assert response.status_code == 400
    assert response.json() == {"error": "bad request"}
    assert_security_headers(response)
    assert gateway_server.metrics.service_calls_total() == calls_before
    assert await balance(purchase.account) == 0


async def test_during_a_secret_rotation_both_secrets_are_accepted(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    for secrets in [(SECRET,), (ROTATED_SECRET,), (ROTATED_SECRET, SECRET)]:
        purchase = Purchase()
        body = purchase.event("checkout.session.completed")

        response = await gateway_server.post(http, body, sign(body, *secrets))

        assert response.status_code == 200, secrets
        assert await balance(purchase.account) == 1000


async def test_a_2_mib_body_is_413_before_it_is_read(
    gateway_server: RunningGateway, http: httpx.AsyncClient
) -> None:
    """Declared by Content-Length: refused before a byte of the body is read."""
    host, port = gateway_server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /stripe/webhook HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {TWO_MIB}\r\nStripe-Signature: t=1,v1=00\r\n\r\n".encode()
    )
    await writer.drain()

    status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    writer.close()

    assert status_line.startswith(b"HTTP/1.1 413")
    assert b"x-content-type-options: nosniff" in head.lower()


async def test_a_streamed_body_is_cut_off_past_1_mib(
    gateway_server: RunningGateway, http: httpx.AsyncClient
) -> None:
    """Chunked: nothing is declared, so the bytes are counted as they arrive."""
    calls_before = gateway_server.metrics.service_calls_total()

    async def two_mib() -> AsyncIterator[bytes]:
        for _ in range(TWO_MIB // (64 * 1024)):
            yield b" " * (64 * 1024)

    try:
        response = await http.post(gateway_server.url + "/stripe/webhook", content=two_mib())
    except httpx.TransportError:
        pytest.fail("the gateway should answer 413, not drop the connection")

    assert response.status_code == 413
    assert response.json() == {"error": "payload too large"}
    assert_security_headers(response)
    assert gateway_server.metrics.service_calls_total() == calls_before


async def test_a_2_mib_body_sent_whole_is_413(
    gateway_server: RunningGateway, http: httpx.AsyncClient
) -> None:
    body = b"{" + b" " * (TWO_MIB - 2) + b"}"

    response = await gateway_server.post(http, body)

    assert response.status_code == 413
    assert_security_headers(response)


async def test_a_body_of_exactly_1_mib_is_read(
    gateway_server: RunningGateway, http: httpx.AsyncClient
) -> None:
    body = b" " * WEBHOOK_BODY_BYTES_MAX

    response = await gateway_server.post(http, body)

    assert response.status_code == 400  # read, verified, then refused as no event


async def test_only_the_webhook_and_the_health_check_exist(
    gateway_server: RunningGateway, http: httpx.AsyncClient
) -> None:
    health = await http.get(gateway_server.url + "/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert_security_headers(health)
    assert "server" not in health.headers

    cases = [
        ("GET", "/", 404),
        ("GET", "/stripe/webhook/", 404),
        ("GET", "/healthz/", 404),
        ("GET", "/admin", 404),
        ("POST", "/stripe/webhooks", 404),
        ("GET", "/stripe/webhook", 405),
        ("PUT", "/stripe/webhook", 405),
        ("PATCH", "/stripe/webhook", 405),
        ("DELETE", "/stripe/webhook", 405),
        ("OPTIONS", "/stripe/webhook", 405),
        ("POST", "/healthz", 405),
        ("DELETE", "/healthz", 405),
    ]
    for method, path, status in cases:
        response = await http.request(method, gateway_server.url + path)

        assert response.status_code == status, (method, path)
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error"}
        assert_security_headers(response)


async def test_unhandled_event_types_are_acknowledged(
    gateway_server: RunningGateway, http: httpx.AsyncClient, purchase: Purchase
) -> None:
    body = purchase.event(
        "charge.dispute.created",
        {'"type": "charge.dispute.created"': '"type": "charge.dispute.funds_withdrawn"'},
    )
    calls_before = gateway_server.metrics.service_calls_total()

    response = await gateway_server.post(http, body)

    assert response.status_code == 200
    assert_security_headers(response)
    assert gateway_server.metrics.service_calls_total() == calls_before
