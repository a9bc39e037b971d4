"""Purchases through the whole path: signed delivery -> uvicorn -> gateway -> mTLS ->
credits service -> PostgreSQL, checked by the balance the `ops` caller reads."""

import asyncio

import httpx

from tests.integration.gateway.deliveries import (
    BalanceReader,
    Purchase,
    RunningGateway,
    fixture_bytes,
)

ACCOUNT = "acct_demo_42"
DELIVERIES_CONCURRENT = 50


async def test_the_fixture_scenario_signed_exactly_as_stored(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    """The only test that uses the fixture ids themselves: purchase, the async event of
    the same session, a partial refund (also as refund.created), a dispute opened and
    lost, then the full refund -- the right balance after every step."""
    steps = [
        ("checkout.session.completed", 1000),
        ("checkout.session.async_payment_succeeded", 1000),
        ("checkout.session.completed.unpaid", 1000),
        ("charge.refunded", 600),
        ("refund.created", 600),
        ("charge.dispute.created", 0),
        ("charge.dispute.closed.lost", 0),
        ("charge.refunded.full", 0),
        ("checkout.session.completed", 0),
    ]
    for name, expected in steps:
        response = await gateway_server.post(http, fixture_bytes(name))

        assert response.status_code == 200, name
        assert await balance(ACCOUNT) == expected, name


def purchases_counted(gateway: RunningGateway, outcome: str) -> float:
    labels = {"event_type": "checkout.session.completed", "outcome": outcome, "status": "200"}
    return gateway.metrics.registry.get_sample_value("credits_gateway_webhooks_total", labels) or 0


async def test_a_purchase_delivered_again_later_is_counted_replayed_not_granted(
    gateway_server: RunningGateway,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    purchase: Purchase,
) -> None:
    body = purchase.event("checkout.session.completed")
    granted_before = purchases_counted(gateway_server, "granted")
    replayed_before = purchases_counted(gateway_server, "replayed")

    assert (await gateway_server.post(http, body)).status_code == 200
    assert (await gateway_server.post(http, body)).status_code == 200

    assert await balance(purchase.account) == 1000
    assert purchases_counted(gateway_server, "granted") == granted_before + 1
    assert purchases_counted(gateway_server, "replayed") == replayed_before + 1


async def test_one_purchase_delivered_50_times_at_once_and_as_two_events_grants_once(
    gateway_server: RunningGateway,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    purchase: Purchase,
) -> None:
    completed = purchase.event("checkout.session.completed")
    succeeded = purchase.event("checkout.session.async_payment_succeeded")
    bodies = [completed if i % 2 else succeeded for i in range(DELIVERIES_CONCURRENT)]

    responses = await asyncio.gather(*(gateway_server.post(http, body) for body in bodies))

    assert [r.status_code for r in responses] == [200] * DELIVERIES_CONCURRENT
    assert await balance(purchase.account) == 1000
    assert (await gateway_server.post(http, completed)).status_code == 200
    assert await balance(purchase.account) == 1000


async def test_the_bigger_package_grants_its_units(
    gateway_server: RunningGateway,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    purchase: Purchase,
) -> None:
    body = purchase.event(
        "checkout.session.completed",
        {
            '"amount_total": 1000': '"amount_total": 5000',
            '"amount_subtotal": 1000': '"amount_subtotal": 5000',
            '"credit_package": "credits_1000"': '"credit_package": "credits_5000"',
        },
    )

    assert (await gateway_server.post(http, body)).status_code == 200
    assert await balance(purchase.account) == 5500


async def test_a_session_that_does_not_match_its_package_grants_nothing(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    mismatches = {
        "amount": {'"amount_total": 1000': '"amount_total": 999'},
        "currency": {'"currency": "usd"': '"currency": "eur"'},
        "the other package's price": {'"amount_total": 1000': '"amount_total": 5000'},
        "unknown package": {'"credit_package": "credits_1000"': '"credit_package": "gold"'},
        "subscription": {'"mode": "payment"': '"mode": "subscription"'},
    }
    calls_before = gateway_server.metrics.service_calls_total()
    for case, edits in mismatches.items():
        purchase = Purchase()

        response = await gateway_server.post(
            http, purchase.event("checkout.session.completed", edits)
        )

        assert response.status_code == 200, case  # Stripe must not retry it
        assert await balance(purchase.account) == 0, case
    assert gateway_server.metrics.service_calls_total() == calls_before


async def test_an_unpaid_session_waits_for_its_async_payment(
    gateway_server: RunningGateway,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    purchase: Purchase,
) -> None:
    unpaid = await gateway_server.post(http, purchase.event("checkout.session.completed.unpaid"))
    assert unpaid.status_code == 200
    assert await balance(purchase.account) == 0

    paid = purchase.event("checkout.session.async_payment_succeeded")
    assert (await gateway_server.post(http, paid)).status_code == 200
    assert await balance(purchase.account) == 1000
