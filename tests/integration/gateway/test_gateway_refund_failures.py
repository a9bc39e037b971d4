"""A refund that fails or is canceled with no charge.refunded after it: the gateway reads
the charge from Stripe's API (here a real HTTP stub on loopback, through the `stripe`
library) and claims its new running total as of the failure event."""

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.stripe_api import StripeCharges
from tests.integration.gateway.deliveries import (
    BalanceReader,
    Purchase,
    RunningGateway,
    start_gateway,
)
from tests.integration.gateway.stripe_stub import API_KEY, StripeStub, stripe_stub
from tests.integration.gateway.test_gateway_refunds_disputes import (
    PARTIAL_REFUND,
    REFUNDED_AT,
    bought,
    deliver,
    refunded,
)
from tests.support import RunningServer

# An hour after the refund: when Stripe says it failed.
FAILED_AT = REFUNDED_AT + 3600


def refund_failed(purchase: Purchase, event_type: str = "refund.failed") -> bytes:
    """The purchase's refund of 400, failed, as Stripe tells it at FAILED_AT."""
    return purchase.event(
        "refund.created",
        {
            '"type": "refund.created"': f'"type": "{event_type}"',
            '"status": "succeeded"': '"status": "failed"',
            f'"created": {REFUNDED_AT},\n  "data"': f'"created": {FAILED_AT},\n  "data"',
        },
    )


def charge_now(purchase: Purchase, amount_refunded: int) -> dict[str, object]:
    """The purchase's charge as Stripe's API would answer for it (the fixture's charge)."""
    document = json.loads(purchase.event(PARTIAL_REFUND))
    charge: dict[str, object] = document["data"]["object"]
    charge.update(amount_refunded=amount_refunded, refunded=False)
    return charge


def outcomes(gateway: RunningGateway, event_type: str, outcome: str, status: int) -> float:
    labels = {"event_type": event_type, "outcome": outcome, "status": str(status)}
    value = gateway.metrics.registry.get_sample_value("credits_gateway_webhooks_total", labels)
    return value or 0.0


@pytest.fixture
def stub() -> Iterator[StripeStub]:
    with stripe_stub() as running:
        yield running


async def _gateway(
    credits_server: RunningServer, pki: Path, api_base: str
) -> AsyncIterator[RunningGateway]:
    charges = StripeCharges(API_KEY, api_base)
    running = await start_gateway(credits_server.address, pki, charges=charges)
    try:
        yield running
    finally:
        await running.stop()
        await charges.close()


@pytest.fixture
async def keyed_gateway(
    credits_server: RunningServer, pki: Path, stub: StripeStub
) -> AsyncIterator[RunningGateway]:
    """A gateway with an API key, whose Stripe is the stub."""
    async for running in _gateway(credits_server, pki, stub.url):
        yield running


@pytest.fixture
async def unreachable_gateway(
    credits_server: RunningServer, pki: Path
) -> AsyncIterator[RunningGateway]:
    """A gateway with an API key whose Stripe does not answer: a loopback port that was
    free a moment ago, so connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async for running in _gateway(credits_server, pki, f"http://127.0.0.1:{port}"):
        yield running


@pytest.mark.parametrize("event_type", ["refund.failed", "charge.refund.updated"])
async def test_a_failed_refund_reads_its_charge_and_gives_the_credits_back(
    keyed_gateway: RunningGateway,
    stub: StripeStub,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    event_type: str,
) -> None:
    purchase = await bought(keyed_gateway, http)
    assert await deliver(keyed_gateway, http, refunded(purchase, 400)) == [200]
    assert await balance(purchase.account) == 600
    charge_id = purchase.ids["ch_1PgafuB7WZ01zgkWXYmPNZs8"]
    stub.charges[charge_id] = charge_now(purchase, 0)  # Stripe's total after the failure

    failed = refund_failed(purchase, event_type)
    assert await deliver(keyed_gateway, http, failed, failed) == [200, 200]

    assert await balance(purchase.account) == 1000
    assert stub.requests == [(f"/v1/charges/{charge_id}", f"Bearer {API_KEY}")] * 2
    assert outcomes(keyed_gateway, event_type, "refund_below_one_unit", 200) == 2
    # The refund's own charge.refunded, delivered late: older than the failure, no effect.
    assert await deliver(keyed_gateway, http, refunded(purchase, 400)) == [200]
    assert await balance(purchase.account) == 1000


async def test_a_failed_refund_then_a_new_one_keeps_the_new_one(
    keyed_gateway: RunningGateway, stub: StripeStub, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(keyed_gateway, http)
    assert await deliver(keyed_gateway, http, refunded(purchase, 400)) == [200]
    charge_id = purchase.ids["ch_1PgafuB7WZ01zgkWXYmPNZs8"]
    # Read late: by then a new refund of 100 had been made.
    stub.charges[charge_id] = charge_now(purchase, 100)

    assert await deliver(keyed_gateway, http, refund_failed(purchase)) == [200]
    newer = refunded(purchase, 100, FAILED_AT + 60)
    assert await deliver(keyed_gateway, http, newer) == [200]

    assert await balance(purchase.account) == 900


async def test_without_an_api_key_a_failed_refund_is_acknowledged_for_an_operator(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)
    assert await deliver(gateway_server, http, refunded(purchase, 400)) == [200]
    outcome = "unfulfillable_refund_failed_no_api_key"
    before = outcomes(gateway_server, "refund.failed", outcome, 200)

    assert await deliver(gateway_server, http, refund_failed(purchase)) == [200]

    assert outcomes(gateway_server, "refund.failed", outcome, 200) == before + 1
    assert await balance(purchase.account) == 600


async def test_stripe_unreachable_is_503_so_stripe_delivers_again(
    unreachable_gateway: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(unreachable_gateway, http)
    assert await deliver(unreachable_gateway, http, refunded(purchase, 400)) == [200]

    assert await deliver(unreachable_gateway, http, refund_failed(purchase)) == [503]

    assert outcomes(unreachable_gateway, "refund.failed", "stripe_unavailable", 503) == 1
    assert await balance(purchase.account) == 600


async def test_a_charge_stripe_does_not_know_is_refused_for_an_operator(
    keyed_gateway: RunningGateway, stub: StripeStub, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(keyed_gateway, http)
    assert await deliver(keyed_gateway, http, refunded(purchase, 400)) == [200]

    assert await deliver(keyed_gateway, http, refund_failed(purchase)) == [500]

    assert outcomes(keyed_gateway, "refund.failed", "refused_by_stripe", 500) == 1
    assert await balance(purchase.account) == 600
