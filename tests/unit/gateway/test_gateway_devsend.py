"""`devsend`'s test purchases: events the gateway plans as Stripe's, about one payment."""

import json

import pytest

from gateway.devsend import DevPurchase
from gateway.events import Purchase, Revocation, parse_envelope, plan
from gateway.packages import PackageTable


def planned(body: bytes, packages: PackageTable) -> object:
    envelope = parse_envelope(json.loads(body))
    assert envelope is not None
    return plan(envelope, packages, "")


def test_a_purchase_grants_the_package_at_its_price(packages: PackageTable) -> None:
    package = packages.by_name["credits_5000"]
    purchase = DevPurchase("acct_dev_1", package)

    result = planned(purchase.purchase(), packages)

    assert isinstance(result, Purchase)
    assert (result.grant.account_id, result.grant.amount) == ("acct_dev_1", 5500)
    assert result.grant.external_ref == purchase.payment_intent


def test_the_same_account_package_and_order_name_the_same_payment(
    packages: PackageTable,
) -> None:
    package = packages.by_name["credits_1000"]
    first, again = DevPurchase("acct_dev_1", package), DevPurchase("acct_dev_1", package)
    other_order = DevPurchase("acct_dev_1", package, order="2")

    assert first.payment_intent == again.payment_intent
    assert other_order.payment_intent != first.payment_intent
    assert first.purchase() != again.purchase()  # each event has an id of its own


@pytest.mark.parametrize(("refunded", "units"), [(400, 400), (1000, 1000)])
def test_a_refund_revokes_its_share_of_the_purchase(
    packages: PackageTable, refunded: int, units: int
) -> None:
    purchase = DevPurchase("acct_dev_1", packages.by_name["credits_1000"])

    result = planned(purchase.refund(refunded), packages)

    assert isinstance(result, Revocation)
    assert result.marked
    assert (result.revoke.external_ref, result.revoke.amount) == (purchase.payment_intent, units)


@pytest.mark.parametrize(
    ("stage", "outcome"),
    [("created", "dispute_revoked"), ("lost", "dispute_lost"), ("won", "dispute_won_restored")],
)
def test_a_dispute_is_of_the_purchase(packages: PackageTable, stage: str, outcome: str) -> None:
    purchase = DevPurchase("acct_dev_1", packages.by_name["credits_1000"])

    result = planned(purchase.dispute(stage), packages)

    assert isinstance(result, Revocation)
    assert (result.outcome, result.revoke.external_ref) == (outcome, purchase.payment_intent)
    assert result.marked
