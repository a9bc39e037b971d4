"""Refunds and disputes through the whole path: each takes back exactly what it should,
once, whatever the number and order of deliveries."""

import asyncio

import httpx
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from tests.integration.gateway.deliveries import BalanceReader, Purchase, RunningGateway
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import new_id

PURCHASE = "checkout.session.completed"
PARTIAL_REFUND = "charge.refunded"  # amount_refunded 400 of 1000
FULL_REFUND = "charge.refunded.full"
DISPUTE_CREATED = "charge.dispute.created"
DISPUTE_LOST = "charge.dispute.closed.lost"
DISPUTE_WON_EDIT = {'"status": "lost"': '"status": "won"'}
# A dispute of a sale no package can explain: it costs more than any package.
NOT_A_PACKAGE_AMOUNT = {'"amount": 600,': '"amount": 12000,'}
BIG_PURCHASE_EDITS = {
    '"amount_total": 1000': '"amount_total": 5000',
    '"amount_subtotal": 1000': '"amount_subtotal": 5000',
    '"credit_package": "credits_1000"': '"credit_package": "credits_5000"',
}
# Part of credits_5000's price (5000 cents for 5500 units), less than credits_1000 never.
PARTIAL_DISPUTE = {'"amount": 600,': '"amount": 3000,'}


# The partial refund fixture's event `created`, the time its claim is as of.
REFUNDED_AT = 1795403600


def refunded(purchase: Purchase, amount_refunded: int, created: int = REFUNDED_AT) -> bytes:
    """charge.refunded with the charge's running total, told at `created`."""
    return purchase.event(
        PARTIAL_REFUND,
        {
            '"amount_refunded": 400': f'"amount_refunded": {amount_refunded}',
            f'"created": {REFUNDED_AT}': f'"created": {created}',
        },
    )


async def deliver(gateway: RunningGateway, http: httpx.AsyncClient, *bodies: bytes) -> list[int]:
    return [(await gateway.post(http, body)).status_code for body in bodies]


async def bought(gateway: RunningGateway, http: httpx.AsyncClient) -> Purchase:
    purchase = Purchase()
    assert await deliver(gateway, http, purchase.event(PURCHASE)) == [200]
    return purchase


async def test_a_partial_then_a_full_refund_repeated_revoke_the_right_total_once(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)
    partial, full = purchase.event(PARTIAL_REFUND), purchase.event(FULL_REFUND)

    assert await deliver(gateway_server, http, partial, partial, partial) == [200] * 3
    assert await balance(purchase.account) == 600
    statuses = await asyncio.gather(*(gateway_server.post(http, full) for _ in range(10)))
    assert {r.status_code for r in statuses} == {200}
    assert await balance(purchase.account) == 0
    assert await deliver(gateway_server, http, partial, full) == [200, 200]
    assert await balance(purchase.account) == 0


async def test_refunds_delivered_out_of_order_settle_on_the_highest_total(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)

    assert await deliver(gateway_server, http, refunded(purchase, 700)) == [200]
    assert await balance(purchase.account) == 300
    # The earlier refund of 400 arrives late: already inside the 700, nothing more.
    assert await deliver(gateway_server, http, refunded(purchase, 400)) == [200]
    assert await balance(purchase.account) == 300
    assert await deliver(gateway_server, http, purchase.event(FULL_REFUND)) == [200]
    assert await balance(purchase.account) == 0


async def test_a_full_refund_before_the_partial_one_revokes_the_purchase_once(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)
    # Credits of another grant must stay where they are.
    other = Purchase()
    other.ids["acct_demo_42"] = purchase.account
    assert await deliver(gateway_server, http, other.event(PURCHASE)) == [200]
    assert await balance(purchase.account) == 2000

    full, partial = purchase.event(FULL_REFUND), purchase.event(PARTIAL_REFUND)
    assert await deliver(gateway_server, http, full, partial, full, partial) == [200] * 4
    assert await balance(purchase.account) == 1000


async def test_a_refund_before_its_purchase_is_retried_until_the_purchase_is_in(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = Purchase()
    refund = purchase.event(PARTIAL_REFUND)  # its charge is marked as a credits purchase

    assert await deliver(gateway_server, http, refund, refund) == [503, 503]
    assert await deliver(gateway_server, http, purchase.event(PURCHASE)) == [200]
    assert await deliver(gateway_server, http, refund) == [200]
    assert await balance(purchase.account) == 600
    assert await deliver(gateway_server, http, purchase.event(DISPUTE_CREATED)) == [200]
    assert await balance(purchase.account) == 0


async def test_refunds_and_disputes_of_payments_that_are_not_credits_purchases_are_2xx(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    """Another product sold on the same Stripe account: no grant has its payment, and its
    charge carries no credits mark. Stripe must not retry these until it gives up."""
    other_sale = Purchase()
    unmarked = {'"credit_package": "credits_1000"': '"order": "tshirt-42"'}
    events = [
        other_sale.event(PARTIAL_REFUND, unmarked),
        other_sale.event(FULL_REFUND, unmarked),
        other_sale.event(DISPUTE_CREATED, NOT_A_PACKAGE_AMOUNT),
        other_sale.event(DISPUTE_LOST, NOT_A_PACKAGE_AMOUNT),
        other_sale.event(DISPUTE_LOST, {**NOT_A_PACKAGE_AMOUNT, **DISPUTE_WON_EDIT}),
    ]
    before = gateway_server.metrics.registry.get_sample_value(
        "credits_gateway_webhooks_total",
        {"event_type": "charge.refunded", "outcome": "not_a_purchase", "status": "200"},
    )

    assert await deliver(gateway_server, http, *events) == [200] * len(events)

    after = gateway_server.metrics.registry.get_sample_value(
        "credits_gateway_webhooks_total",
        {"event_type": "charge.refunded", "outcome": "not_a_purchase", "status": "200"},
    )
    assert (after or 0) - (before or 0) == 2
    assert await balance(other_sale.account) == 0


async def test_a_dispute_opened_and_lost_before_its_purchase_is_retried_until_it_claims(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    """A dispute whose amount a package can explain is taken for a credits purchase:
    before the purchase is granted it is answered 503, so Stripe delivers it again and
    the claim is made once the grant exists (issue 23.5: it used to be acknowledged as
    "not a purchase", and a loss before the grant left the customer every credit)."""
    purchase = Purchase()
    created, lost = purchase.event(DISPUTE_CREATED), purchase.event(DISPUTE_LOST)

    assert await deliver(gateway_server, http, created, lost) == [503, 503]
    assert await deliver(gateway_server, http, purchase.event(PURCHASE)) == [200]
    assert await balance(purchase.account) == 1000
    assert await deliver(gateway_server, http, lost, created) == [200, 200]
    assert await balance(purchase.account) == 0


async def test_a_partial_dispute_claims_its_share_and_a_win_gives_it_back(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = Purchase()
    assert await deliver(gateway_server, http, purchase.event(PURCHASE, BIG_PURCHASE_EDITS)) == [
        200
    ]
    created = purchase.event(DISPUTE_CREATED, PARTIAL_DISPUTE)
    lost = purchase.event(DISPUTE_LOST, PARTIAL_DISPUTE)
    won = purchase.event(DISPUTE_LOST, {**PARTIAL_DISPUTE, **DISPUTE_WON_EDIT})

    assert await deliver(gateway_server, http, created, lost, created) == [200] * 3
    assert await balance(purchase.account) == 5500 - 3300  # 3000 of 5000 cents disputed
    assert await deliver(gateway_server, http, won) == [200]
    assert await balance(purchase.account) == 5500


async def test_a_dispute_opened_then_won_gives_back_what_it_took(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)
    assert await deliver(gateway_server, http, purchase.event(PARTIAL_REFUND)) == [200]
    created = purchase.event(DISPUTE_CREATED)
    won = purchase.event(DISPUTE_LOST, DISPUTE_WON_EDIT)

    assert await deliver(gateway_server, http, created, created) == [200, 200]
    assert await balance(purchase.account) == 0
    assert await deliver(gateway_server, http, won) == [200]
    assert await balance(purchase.account) == 600
    assert await deliver(gateway_server, http, won, created, won) == [200] * 3
    assert await balance(purchase.account) == 600


async def test_a_dispute_won_before_it_was_opened_changes_nothing_in_the_end(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)
    created = purchase.event(DISPUTE_CREATED)
    won = purchase.event(DISPUTE_LOST, DISPUTE_WON_EDIT)

    assert await deliver(gateway_server, http, won, created, won) == [200] * 3
    assert await balance(purchase.account) == 1000


async def test_a_dispute_opened_then_lost_revokes_what_remains_once(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)
    created, lost = purchase.event(DISPUTE_CREATED), purchase.event(DISPUTE_LOST)

    assert await deliver(gateway_server, http, created) == [200]
    assert await balance(purchase.account) == 0
    # A later purchase of the same account is not touched by the dispute's replays.
    other = Purchase()
    other.ids["acct_demo_42"] = purchase.account
    assert await deliver(gateway_server, http, other.event(PURCHASE)) == [200]
    assert await deliver(gateway_server, http, lost, created, lost) == [200] * 3
    assert await balance(purchase.account) == 1000


async def test_a_dispute_lost_before_it_was_opened_still_revokes_once(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)
    created, lost = purchase.event(DISPUTE_CREATED), purchase.event(DISPUTE_LOST)

    assert await deliver(gateway_server, http, lost, created, lost) == [200] * 3
    assert await balance(purchase.account) == 0


async def reserve_all(backend: Stub, account: str, amount: int) -> str:
    request = pb.ReserveRequest(account_id=account, amount=amount, idempotency_key=new_id())
    return str((await backend.Reserve(request, timeout=T)).reservation.reservation_id)


async def release(backend: Stub, account: str, reservation_id: str) -> None:
    request = pb.ReleaseRequest(account_id=account, reservation_id=reservation_id)
    await backend.Release(request, timeout=T)


async def test_a_won_dispute_gives_back_credits_held_when_it_opened_and_released_before(
    gateway_server: RunningGateway,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    backend: Stub,
) -> None:
    purchase = await bought(gateway_server, http)
    held = await reserve_all(backend, purchase.account, 1000)
    assert await deliver(gateway_server, http, purchase.event(DISPUTE_CREATED)) == [200]
    # The job fails: the held credits come back and pay the dispute's debt.
    await release(backend, purchase.account, held)
    assert await balance(purchase.account) == 0

    won = purchase.event(DISPUTE_LOST, DISPUTE_WON_EDIT)
    assert await deliver(gateway_server, http, won, won) == [200, 200]
    assert await balance(purchase.account) == 1000


async def test_a_won_dispute_cancels_the_debt_of_credits_still_held(
    gateway_server: RunningGateway,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    backend: Stub,
) -> None:
    purchase = await bought(gateway_server, http)
    held = await reserve_all(backend, purchase.account, 1000)
    created, won = purchase.event(DISPUTE_CREATED), purchase.event(DISPUTE_LOST, DISPUTE_WON_EDIT)
    assert await deliver(gateway_server, http, created, won) == [200, 200]
    # The debt is gone: credits coming back now stay with the customer.
    await release(backend, purchase.account, held)
    assert await balance(purchase.account) == 1000


DISPUTE_ON_THE_REST_THEN_WON = [
    ("refund", "dispute", "won"),
    ("dispute", "refund", "won"),
    ("dispute", "won", "refund"),
    ("won", "dispute", "refund"),
    ("won", "refund", "dispute"),
    ("refund", "won", "dispute"),
]


@pytest.mark.parametrize("order", DISPUTE_ON_THE_REST_THEN_WON)
async def test_a_refund_and_a_won_dispute_converge_in_every_order(
    gateway_server: RunningGateway,
    http: httpx.AsyncClient,
    balance: BalanceReader,
    order: tuple[str, str, str],
) -> None:
    purchase = await bought(gateway_server, http)
    bodies = {
        "refund": purchase.event(PARTIAL_REFUND),
        "dispute": purchase.event(DISPUTE_CREATED),
        "won": purchase.event(DISPUTE_LOST, DISPUTE_WON_EDIT),
    }
    assert await deliver(gateway_server, http, *(bodies[name] for name in order)) == [200] * 3
    # Refunded 400 of 1000; the dispute on the rest was won: the customer keeps 600.
    assert await balance(purchase.account) == 600


async def test_a_refund_that_failed_gives_its_credits_back(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    """400 refunded, that refund fails (Stripe takes amount_refunded back to 0), then a
    refund of 100: the charge's running total says 100, so 900 credits should remain."""
    purchase = await bought(gateway_server, http)
    assert await deliver(gateway_server, http, refunded(purchase, 400, REFUNDED_AT)) == [200]
    assert await balance(purchase.account) == 600

    later = refunded(purchase, 100, REFUNDED_AT + 60)
    assert await deliver(gateway_server, http, later) == [200]

    assert await balance(purchase.account) == 900
    # Stripe delivering the older event again, late: nothing changes.
    assert await deliver(gateway_server, http, refunded(purchase, 400, REFUNDED_AT)) == [200]
    assert await balance(purchase.account) == 900


async def test_refund_totals_delivered_in_reverse_order_converge_on_the_latest(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    purchase = await bought(gateway_server, http)
    older, newer = refunded(purchase, 400, REFUNDED_AT), refunded(purchase, 100, REFUNDED_AT + 60)

    assert await deliver(gateway_server, http, newer, older, newer, older) == [200] * 4

    assert await balance(purchase.account) == 900


async def test_a_refund_total_back_below_one_unit_gives_everything_back(
    gateway_server: RunningGateway, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    """A running total as of a newer event that is worth no unit (here 0: the refund
    failed) claims nothing, rather than everything: the purchase's credits all come back."""
    purchase = await bought(gateway_server, http)
    assert await deliver(gateway_server, http, refunded(purchase, 400, REFUNDED_AT)) == [200]

    tiny = refunded(purchase, 0, REFUNDED_AT + 60)
    assert await deliver(gateway_server, http, tiny) == [200]

    assert await balance(purchase.account) == 1000
