"""The HTTP surface in process (the integration tests repeat the essentials through a
real uvicorn server and the real service)."""

import json
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import stripe

from gateway.app import SECURITY_HEADERS, WEBHOOK_BODY_BYTES_MAX, Gateway, create_app
from gateway.events import GrantCall, RevokeCall
from gateway.metrics import GatewayMetrics
from gateway.packages import PackageTable
from gateway.service_calls import Granted, Revoked

SECRET = "whsec_unit_test_secret_0123456789"


class CountingCredits:
    def __init__(self) -> None:
        self.calls: list[GrantCall | RevokeCall] = []

    async def grant(self, call: GrantCall) -> Granted:
        self.calls.append(call)
        return Granted("grant-1")

    async def revoke(self, call: RevokeCall) -> Revoked:
        self.calls.append(call)
        return Revoked("acct_1", call.amount, 0)


@pytest.fixture
def credits() -> CountingCredits:
    return CountingCredits()


@pytest.fixture
async def client(
    credits: CountingCredits, packages: PackageTable
) -> AsyncIterator[httpx.AsyncClient]:
    gateway = Gateway((SECRET,), packages, "", credits, GatewayMetrics())
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


def signed(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), secret, timestamp)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


async def test_a_signed_purchase_is_granted(
    client: httpx.AsyncClient, credits: CountingCredits, fixture_bytes: Callable[[str], bytes]
) -> None:
    body = fixture_bytes("checkout.session.completed")

    response = await client.post("/stripe/webhook", content=body, headers=signed(body))

    assert response.status_code == 200
    assert response.json() == {"received": True}
    assert response.headers["x-request-id"]
    assert_security_headers(response)
    assert [call.idempotency_key for call in credits.calls] == [
        "checkout:cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY"
    ]


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "stale", "missing", "not_utf8"])
async def test_a_bad_signature_is_400_and_calls_nothing(
    client: httpx.AsyncClient,
    credits: CountingCredits,
    fixture_bytes: Callable[[str], bytes],
    case: str,
) -> None:
    body = fixture_bytes("checkout.session.completed")
    headers = signed(body)
    if case == "tampered":
        body = body.replace(b'"amount_total": 1000', b'"amount_total": 5000')
    elif case == "wrong_secret":
        headers = signed(body, "whsec_not_the_endpoint_secret_00")
    elif case == "stale":
        headers = signed(body, timestamp=int(time.time()) - 3600)
    elif case == "missing":
        del headers["Stripe-Signature"]
    else:
        body = b"\xff" + body

    response = await client.post("/stripe/webhook", content=body, headers=headers)

    assert response.status_code == 400
    assert response.json() == {"error": "bad request"}
    assert_security_headers(response)
    assert credits.calls == []


async def test_a_signed_body_that_is_not_an_event_is_400(
    client: httpx.AsyncClient, credits: CountingCredits
) -> None:
    for body in (b"not json", b"[]", b'{"object": "event"}', b"[" * 100_000):
        response = await client.post("/stripe/webhook", content=body, headers=signed(body))
        assert response.status_code == 400
    assert credits.calls == []


async def test_a_body_over_1_mib_is_413_before_anything_else(
    client: httpx.AsyncClient, credits: CountingCredits
) -> None:
    body = json.dumps({"pad": "x" * WEBHOOK_BODY_BYTES_MAX}).encode()

    declared = await client.post("/stripe/webhook", content=body, headers=signed(body))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * (WEBHOOK_BODY_BYTES_MAX // 2)

    streamed = await client.post("/stripe/webhook", content=chunks())

    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json() == {"error": "payload too large"}
        assert_security_headers(response)
    assert credits.calls == []


async def test_exactly_1_mib_is_not_too_large(client: httpx.AsyncClient) -> None:
    body = b" " * WEBHOOK_BODY_BYTES_MAX

    response = await client.post("/stripe/webhook", content=body, headers=signed(body))

    assert response.status_code == 400  # read whole, then refused as no event


async def test_only_two_routes_exist(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert_security_headers(health)

    for method, path, status in [
        ("GET", "/", 404),
        ("GET", "/healthz/", 404),
        ("POST", "/stripe/webhook/", 404),
        ("GET", "/stripe", 404),
        ("GET", "/metrics", 404),
        ("GET", "/stripe/webhook", 405),
        ("PUT", "/stripe/webhook", 405),
        ("DELETE", "/stripe/webhook", 405),
        ("POST", "/healthz", 405),
        ("OPTIONS", "/healthz", 405),
    ]:
        response = await client.request(method, path)
        assert response.status_code == status, (method, path)
        assert response.json()["error"] in {"not found", "method not allowed"}
        assert_security_headers(response)
    assert (await client.put("/stripe/webhook")).headers["allow"] == "POST"


async def test_outcomes_are_counted(
    credits: CountingCredits, packages: PackageTable, fixture_bytes: Callable[[str], bytes]
) -> None:
    metrics = GatewayMetrics()
    app = create_app(Gateway((SECRET,), packages, "", credits, metrics))
    body = fixture_bytes("checkout.session.completed.unpaid")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        await client.post("/stripe/webhook", content=body, headers=signed(body))
        await client.post("/stripe/webhook", content=body)

    sample = metrics.registry.get_sample_value
    labels = {"event_type": "checkout.session.completed", "outcome": "unpaid", "status": "200"}
    assert sample("credits_gateway_webhooks_total", labels) == 1
    labels = {"event_type": "other", "outcome": "bad_signature", "status": "400"}
    assert sample("credits_gateway_webhooks_total", labels) == 1
