"""Stripe events -> planned calls, on Stripe's own object shapes."""

import datetime
from collections.abc import Callable
from typing import Any

import pytest

from gateway.events import (
    Acknowledge,
    FetchCharge,
    GrantCall,
    GrantSource,
    Purchase,
    Revocation,
    RevokeCall,
    parse_envelope,
    plan,
    refund_units,
)
from gateway.packages import PackageTable

Events = Callable[[str], dict[str, Any]]
SESSION_ID = "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY"
PAYMENT_INTENT = "pi_1PgafyB7WZ01zgkWSjxsAJo3"
CHARGE_ID = "ch_1PgafuB7WZ01zgkWXYmPNZs8"
DISPUTE_ID = "dp_1Pgc71B7WZ01zgkWMevJiAUx"
REFUND_ID = "re_1Pgc72B7WZ01zgkWqPvrRrPE"
# The `created` of the charge.refunded fixtures.
REFUNDED_AT = 1795403600


def planned(document: dict[str, Any], packages: PackageTable, metadata_key: str = "") -> Any:
    envelope = parse_envelope(document)
    assert envelope is not None
    return plan(envelope, packages, metadata_key)


def test_a_paid_session_grants_its_package_once_per_session(
    fixture_event: Events, packages: PackageTable
) -> None:
    result = planned(fixture_event("checkout.session.completed"), packages)

    assert result == Purchase(
        GrantCall(
            account_id="acct_demo_42",
            amount=1000,
            source=GrantSource.PURCHASE,
            idempotency_key=f"checkout:{SESSION_ID}",
            external_ref=PAYMENT_INTENT,
            description="Stripe Checkout purchase of credits_1000",
            metadata=(("credit_package", "credits_1000"), ("stripe_session", SESSION_ID)),
        ),
        {"session": SESSION_ID, "payment_intent": PAYMENT_INTENT, "package": "credits_1000"},
    )


def test_completed_and_async_succeeded_build_the_same_grant(
    fixture_event: Events, packages: PackageTable
) -> None:
    completed = planned(fixture_event("checkout.session.completed"), packages)
    succeeded = planned(fixture_event("checkout.session.async_payment_succeeded"), packages)

    assert isinstance(completed, Purchase)
    assert completed.grant == succeeded.grant


def test_an_unpaid_session_waits_for_the_async_event(
    fixture_event: Events, packages: PackageTable
) -> None:
    result = planned(fixture_event("checkout.session.completed.unpaid"), packages)

    assert result == Acknowledge("unpaid", {"session": SESSION_ID})


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        ({"amount_total": 999}, "unfulfillable_price_mismatch"),
        ({"amount_total": 5000}, "unfulfillable_price_mismatch"),
        ({"currency": "eur"}, "unfulfillable_price_mismatch"),
        ({"currency": "USD"}, "unfulfillable_price_mismatch"),
        ({"amount_total": "1000"}, "unfulfillable_price_mismatch"),
        ({"metadata": {"credit_package": "credits_9999"}}, "unfulfillable_package"),
        ({"metadata": {}}, "unfulfillable_package"),
        ({"client_reference_id": None}, "unfulfillable_account"),
        ({"client_reference_id": "acct demo"}, "unfulfillable_account"),
        ({"client_reference_id": "a" * 129}, "unfulfillable_account"),
        ({"payment_intent": None}, "unfulfillable_no_payment_intent"),
        ({"mode": "subscription"}, "not_payment_mode"),
        ({"payment_status": "no_payment_required"}, "unpaid"),
        ({"object": "payment_intent"}, "malformed"),
    ],
)
def test_a_session_that_does_not_match_its_package_grants_nothing(
    fixture_event: Events, packages: PackageTable, change: dict[str, Any], outcome: str
) -> None:
    document = fixture_event("checkout.session.completed")
    document["data"]["object"].update(change)

    result = planned(document, packages)

    assert isinstance(result, Acknowledge)
    assert result.outcome == outcome


def test_metadata_sets_neither_price_nor_amount(
    fixture_event: Events, packages: PackageTable
) -> None:
    document = fixture_event("checkout.session.completed")
    session = document["data"]["object"]
    session["metadata"].update({"amount": "999999", "units": "999999", "price": "1"})

    result = planned(document, packages)

    assert isinstance(result, Purchase)
    assert result.grant.amount == 1000


def test_the_account_falls_back_to_the_configured_metadata_key(
    fixture_event: Events, packages: PackageTable
) -> None:
    document = fixture_event("checkout.session.completed")
    document["data"]["object"]["client_reference_id"] = None

    assert isinstance(planned(document, packages), Acknowledge)
    result = planned(document, packages, metadata_key="account_id")
    assert isinstance(result, Purchase)
    assert result.grant.account_id == "acct_demo_42"


def test_the_bigger_package_grants_its_bonus_units(
    fixture_event: Events, packages: PackageTable
) -> None:
    document = fixture_event("checkout.session.completed")
    session = document["data"]["object"]
    session.update(amount_total=5000, metadata={"credit_package": "credits_5000"})

    result = planned(document, packages)

    assert isinstance(result, Purchase)
    assert result.grant.amount == 5500


def test_a_refund_asks_for_the_running_total_of_its_charge(
    fixture_event: Events, packages: PackageTable
) -> None:
    partial = planned(fixture_event("charge.refunded"), packages)
    full = planned(fixture_event("charge.refunded.full"), packages)

    assert partial == Revocation(
        RevokeCall(
            external_ref=PAYMENT_INTENT,
            amount=400,
            idempotency_key=f"refund:{CHARGE_ID}:400:{REFUNDED_AT}",
            reason="refund",
            cumulative_series=f"refund:{CHARGE_ID}",
            as_of=datetime.datetime.fromtimestamp(REFUNDED_AT, datetime.UTC),
        ),
        "refund_revoked",
        {"charge": CHARGE_ID, "payment_intent": PAYMENT_INTENT},
        marked=True,
    )
    assert isinstance(full, Revocation)
    assert full.revoke.amount == 1000
    assert full.revoke.idempotency_key.startswith(f"refund:{CHARGE_ID}:1000:")
    assert full.revoke.cumulative_series == partial.revoke.cumulative_series


def test_a_refund_claim_is_as_of_its_event_and_keyed_by_it(
    fixture_event: Events, packages: PackageTable
) -> None:
    """The same running total told at another time is another fact: another key, and
    the later time, so that the service orders it after a lower total in between."""
    earlier = fixture_event("charge.refunded")
    later = fixture_event("charge.refunded")
    later["created"] = REFUNDED_AT + 60

    first, second = planned(earlier, packages), planned(later, packages)

    assert isinstance(first, Revocation)
    assert isinstance(second, Revocation)
    assert second.revoke.idempotency_key == f"refund:{CHARGE_ID}:400:{REFUNDED_AT + 60}"
    assert first.revoke.idempotency_key != second.revoke.idempotency_key
    assert second.revoke.as_of == datetime.datetime(2026, 11, 23, 3, 14, 20, tzinfo=datetime.UTC)


def test_a_refund_key_beyond_the_services_limit_is_not_sent(
    fixture_event: Events, packages: PackageTable
) -> None:
    document = fixture_event("charge.refunded")
    # The longest id the gateway takes, and a total of 16 digits: 135 characters.
    document["data"]["object"].update(id="ch_" + "x" * 97, amount=10**15, amount_refunded=10**15)

    result = planned(document, packages)

    assert isinstance(result, Acknowledge)
    assert result.outcome == "malformed_refund_key_too_long"


def test_a_total_below_one_unit_still_claims_so_it_can_lower_an_earlier_claim(
    fixture_event: Events, packages: PackageTable
) -> None:
    # A refund failed (amount_refunded back to 0): as of this event the charge claims 0.
    document = fixture_event("charge.refunded")
    document["data"]["object"]["amount_refunded"] = 0

    result = planned(document, packages)

    assert isinstance(result, Revocation)
    assert (result.outcome, result.revoke.amount, result.marked) == (
        "refund_below_one_unit",
        0,
        True,
    )
    assert result.revoke.as_of is not None


@pytest.mark.parametrize(
    ("units", "charged", "refunded", "expected"),
    [
        (1000, 1000, 400, 400),
        (1000, 1000, 1000, 1000),
        (5500, 5000, 400, 440),
        (5500, 5000, 5000, 5500),
        (5500, 5000, 1, 1),  # 1.1 units: rounded down
        (1000, 1000, 0, 0),
        (1000, 1000, 2000, 1000),  # capped at the grant
        (3, 1000, 999, 2),
    ],
)
def test_refund_units_are_proportional_rounded_down_and_capped(
    units: int, charged: int, refunded: int, expected: int
) -> None:
    assert refund_units(units, charged, refunded) == expected


def test_a_marked_refund_finds_its_package_by_name(
    fixture_event: Events, packages: PackageTable
) -> None:
    document = fixture_event("charge.refunded")
    document["data"]["object"]["metadata"]["credit_package"] = "credits_5000"
    document["data"]["object"].update(amount=5000, amount_refunded=2500)

    result = planned(document, packages)

    assert isinstance(result, Revocation)
    assert (result.revoke.amount, result.marked) == (2750, True)


@pytest.mark.parametrize("metadata", [{}, {"credit_package": "a_package_renamed_since"}])
def test_a_refund_without_a_known_mark_finds_its_package_by_price(
    fixture_event: Events, packages: PackageTable, metadata: dict[str, str]
) -> None:
    document = fixture_event("charge.refunded")
    document["data"]["object"].update(amount=5000, amount_refunded=2500, metadata=metadata)

    result = planned(document, packages)

    assert isinstance(result, Revocation)
    assert result.revoke.amount == 2750
    assert result.marked is bool(metadata)


def test_a_refund_not_marked_as_a_purchase_is_revoked_unmarked(
    fixture_event: Events, packages: PackageTable
) -> None:
    # Perhaps a purchase paid before marking began: revoke if a grant has the payment, and
    # acknowledge if none has (test_gateway_fulfilment).
    document = fixture_event("charge.refunded")
    document["data"]["object"]["metadata"] = {}

    result = planned(document, packages)

    assert isinstance(result, Revocation)
    assert result.marked is False


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        ({"amount": 1234}, "not_a_purchase"),
        ({"currency": "eur"}, "not_a_purchase"),
        ({"payment_intent": None}, "not_a_purchase"),
        ({"amount": 0}, "malformed"),
        ({"amount_refunded": -5}, "malformed"),
        ({"id": None}, "malformed"),
    ],
)
def test_refunds_that_are_not_of_a_purchase_revoke_nothing(
    fixture_event: Events, packages: PackageTable, change: dict[str, Any], outcome: str
) -> None:
    document = fixture_event("charge.refunded")
    document["data"]["object"].update(metadata={}, **change)

    result = planned(document, packages)

    assert isinstance(result, Acknowledge)
    assert result.outcome == outcome


def test_refund_events_are_acknowledged_and_ignored(
    fixture_event: Events, packages: PackageTable
) -> None:
    # charge.refunded is the one source of truth; counting refund.* too would revoke twice.
    assert planned(fixture_event("refund.created"), packages) == Acknowledge("ignored")


def test_opened_and_lost_disputes_send_the_same_claim_and_won_withdraws_it(
    fixture_event: Events, packages: PackageTable
) -> None:
    created = planned(fixture_event("charge.dispute.created"), packages)
    lost = planned(fixture_event("charge.dispute.closed.lost"), packages)
    won_document = fixture_event("charge.dispute.closed.lost")
    won_document["data"]["object"]["status"] = "won"
    won = planned(won_document, packages)

    claim = RevokeCall(
        external_ref=PAYMENT_INTENT,
        amount=0,
        idempotency_key=f"dispute:{DISPUTE_ID}",
        reason="dispute",
        cumulative_series=f"dispute:{DISPUTE_ID}",
    )
    withdrawal = RevokeCall(
        external_ref=PAYMENT_INTENT,
        amount=0,
        idempotency_key=f"dispute-won:{DISPUTE_ID}",
        reason="dispute won",
        cumulative_series=f"dispute:{DISPUTE_ID}",
        withdraw=True,
    )
    assert isinstance(created, Revocation)
    assert isinstance(lost, Revocation)
    assert isinstance(won, Revocation)
    assert (created.revoke, created.outcome) == (claim, "dispute_revoked")
    assert (lost.revoke, lost.outcome) == (claim, "dispute_lost")
    assert (won.revoke, won.outcome) == (withdrawal, "dispute_won_restored")
    # 600 usd is less than both packages' prices: it can be of either, so it claims all.
    assert created.marked
    assert lost.marked
    assert won.marked


@pytest.mark.parametrize(
    ("disputed", "expected"),
    [
        ((1000, "usd"), (True, 0)),  # credits_1000's whole price: everything it gave
        ((5000, "usd"), (True, 0)),  # credits_5000's whole price
        ((600, "usd"), (True, 0)),  # part of either package: everything (cannot tell which)
        ((3000, "usd"), (True, 3300)),  # part of credits_5000 only: 5500 x 3000/5000
        ((4999, "usd"), (True, 5499)),  # rounded up: 5498.9
        ((12000, "usd"), (False, 0)),  # more than any package costs
        ((1000, "eur"), (False, 0)),  # no package in that currency
    ],
)
def test_a_dispute_claims_what_its_amount_says_of_the_package_it_can_be(
    fixture_event: Events,
    packages: PackageTable,
    disputed: tuple[int, str],
    expected: tuple[bool, int],
) -> None:
    (amount, currency), (marked, units) = disputed, expected
    document = fixture_event("charge.dispute.created")
    document["data"]["object"].update(amount=amount, currency=currency)

    created = planned(document, packages)

    assert isinstance(created, Revocation)
    assert (created.marked, created.revoke.amount) == (marked, units)
    suffix = f":{units}" if units else ""
    assert created.revoke.idempotency_key == f"dispute:{DISPUTE_ID}{suffix}"
    assert created.revoke.cumulative_series == f"dispute:{DISPUTE_ID}"


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("charge.dispute.created", "warning_needs_response"),
        ("charge.dispute.closed", "warning_closed"),
    ],
)
def test_inquiries_revoke_nothing(
    fixture_event: Events, packages: PackageTable, event_type: str, status: str
) -> None:
    document = fixture_event("charge.dispute.created")
    document["type"] = event_type
    document["data"]["object"]["status"] = status

    result = planned(document, packages)

    assert isinstance(result, Acknowledge)
    assert result.outcome == "inquiry_ignored"


@pytest.mark.parametrize(
    "event_type",
    [
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
        "charge.dispute.updated",
        "checkout.session.expired",
        "checkout.session.async_payment_failed",
        "payment_intent.succeeded",
        "customer.created",
    ],
)
def test_other_events_are_acknowledged_and_ignored(
    fixture_event: Events, packages: PackageTable, event_type: str
) -> None:
    document = fixture_event("charge.dispute.created")
    document["type"] = event_type

    assert planned(document, packages) == Acknowledge("ignored")


@pytest.mark.parametrize(
    "document",
    [
        [],
        "event",
        {"object": "event", "id": "evt_1", "type": "x", "data": {}},
        {"object": "event", "id": "evt_1", "type": "x", "data": {"object": []}},
        {"object": "event", "id": "evt 1", "type": "x", "data": {"object": {}}},
        {"object": "event", "id": "evt_1", "type": 5, "data": {"object": {}}},
        {"object": "charge", "id": "evt_1", "type": "x", "data": {"object": {}}, "created": 1},
        # Without a valid time an event cannot be placed among its series' claims.
        {"object": "event", "id": "evt_1", "type": "x", "data": {"object": {}}},
        {"object": "event", "id": "evt_1", "type": "x", "data": {"object": {}}, "created": "1"},
        {"object": "event", "id": "evt_1", "type": "x", "data": {"object": {}}, "created": 1.5},
        {"object": "event", "id": "evt_1", "type": "x", "data": {"object": {}}, "created": True},
        {"object": "event", "id": "evt_1", "type": "x", "data": {"object": {}}, "created": 0},
        {"object": "event", "id": "evt_1", "type": "x", "data": {"object": {}}, "created": 10**12},
    ],
)
def test_what_is_not_an_event_is_refused(document: object) -> None:
    assert parse_envelope(document) is None


def refund_event(
    event_type: str, status: str, changes: dict[str, object] | None = None
) -> dict[str, Any]:
    """A Refund event on the fixture charge (Stripe's shape, as in refund.created)."""
    refund: dict[str, Any] = {
        "id": REFUND_ID,
        "object": "refund",
        "amount": 400,
        "charge": CHARGE_ID,
        "payment_intent": PAYMENT_INTENT,
        "currency": "usd",
        "status": status,
        "created": REFUNDED_AT,
        **(changes or {}),
    }
    return {
        "id": "evt_1TestRefundFailed",
        "object": "event",
        "type": event_type,
        "created": REFUNDED_AT + 3600,
        "data": {"object": refund},
    }


@pytest.mark.parametrize("event_type", ["refund.failed", "refund.updated", "charge.refund.updated"])
@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_a_refund_that_failed_or_was_canceled_reads_its_charge(
    packages: PackageTable, event_type: str, status: str
) -> None:
    result = planned(refund_event(event_type, status), packages)

    assert result == FetchCharge(
        CHARGE_ID,
        REFUNDED_AT + 3600,
        {"refund": REFUND_ID, "charge": CHARGE_ID, "payment_intent": PAYMENT_INTENT},
    )


@pytest.mark.parametrize("status", ["pending", "requires_action", "succeeded"])
def test_other_refund_updates_are_charge_refundeds_business(
    packages: PackageTable, status: str
) -> None:
    result = planned(refund_event("refund.updated", status), packages)

    assert result == Acknowledge("ignored", {"refund": REFUND_ID})


@pytest.mark.parametrize(
    ("changes", "outcome"),
    [
        ({"object": "charge"}, "malformed"),
        ({"id": None}, "malformed"),
        ({"status": None}, "malformed"),
        ({"charge": None}, "not_a_purchase"),
    ],
)
def test_refund_updates_without_what_they_need_read_nothing(
    packages: PackageTable, changes: dict[str, object], outcome: str
) -> None:
    result = planned(refund_event("refund.failed", "failed", changes), packages)

    assert isinstance(result, Acknowledge)
    assert result.outcome == outcome
