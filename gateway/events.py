"""Stripe events -> the credits calls they call for. Pure: no I/O, no clock, no gRPC.

Everything that makes a delivery exactly-once lives in the requests built here: each
request derives only from the Stripe object it is about and, for a refund's claim, the
event's `created` (the time of the fact, the same on every delivery of an event; never
the event id or the delivery), so every delivery of the same fact -- repeated,
concurrent, reordered, or sent as two different event types -- builds the same request,
and the service's idempotency keys turn all of them into one effect. A refund's total
told again by a later event is a later fact: the service keeps the latest (as_of).
"""

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from gateway.packages import PackageTable

# Stripe ids are short [A-Za-z0-9_] strings; bounding them bounds every key built from
# them under the service's 128-character idempotency keys and 256-character values, but
# for a refund's, which adds a total and a time (checked where it is built).
STRIPE_ID_PATTERN = re.compile(r"[A-Za-z0-9_]{1,100}")
# The service's limit (docs/contract.md, "Idempotency").
IDEMPOTENCY_KEY_CHARS_MAX = 128
# The service's rule for account ids (docs/contract.md), checked here so that a bad
# client_reference_id is an unfulfillable purchase, not a retried 500.
ACCOUNT_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")

PURCHASE_EVENTS = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
REFUND_EVENT = "charge.refunded"
# Stripe sends no charge.refunded when a refund fails or is canceled (its running
# amount_refunded goes down): it sends these, whose object is the Refund.
REFUND_FAILURE_EVENTS = frozenset({"charge.refund.updated", "refund.updated", "refund.failed"})
# A refund in these statuses gave the money back to no one: its charge's amount_refunded
# no longer counts it. Other statuses (pending, requires_action, succeeded) are counted
# by charge.refunded, the source of truth for refunds.
REFUND_UNDONE_STATUSES = frozenset({"failed", "canceled"})
DISPUTE_CREATED_EVENT = "charge.dispute.created"
DISPUTE_CLOSED_EVENT = "charge.dispute.closed"
# Closed disputes whose funds came back to the merchant: the credits go back too.
DISPUTE_WON_STATUSES = frozenset({"won"})
DISPUTE_LOST_STATUS = "lost"
# Inquiries (status warning_*) withdraw no funds, so opening one revokes nothing, and
# closing one (warning_closed) has nothing to give back. An inquiry that escalates ends
# as won or lost, and the closed event's request settles it then.
INQUIRY_STATUS_PREFIX = "warning_"

# How a payment says it is a credits purchase: Checkout Sessions are created with
# `payment_intent_data.metadata.credit_package` (the package's name), and Stripe copies a
# PaymentIntent's metadata to its charge, so every refund of the payment carries it.
PURCHASE_MARK_KEY = "credit_package"

CHECKOUT_KEY_PREFIX = "checkout:"
REFUND_SERIES_PREFIX = "refund:"
DISPUTE_KEY_PREFIX = "dispute:"
DISPUTE_WON_KEY_PREFIX = "dispute-won:"
DISPUTE_SERIES_PREFIX = "dispute:"
# An event's `created` (Unix seconds) orders the claims of a refund series; the bounds are
# protobuf's Timestamp (0001-01-01 to 9999-12-31), positive because Stripe is not older
# than 1970.
EVENT_CREATED_MIN = 1
EVENT_CREATED_MAX = 253_402_300_799


class GrantSource(Enum):
    PURCHASE = "purchase"


@dataclass(frozen=True)
class GrantCall:
    account_id: str
    amount: int
    source: GrantSource
    idempotency_key: str
    external_ref: str
    description: str
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RevokeCall:
    """Revoke from the grant whose external_ref is the payment intent; the account is
    left empty because a refund or dispute knows the payment, not the account."""

    external_ref: str
    amount: int
    idempotency_key: str
    reason: str
    cumulative_series: str = ""
    # Withdraw the series' claim (a dispute won): what it took comes back to the grant.
    withdraw: bool = False
    # The time of the fact the claim states (the Stripe event's `created`): the service
    # keeps the series' latest claim, up or down, and ignores an older one.
    as_of: datetime.datetime | None = None


@dataclass(frozen=True)
class Acknowledge:
    """Answer 2xx and call nothing. `outcome` is a metric label: a fixed, small set."""

    outcome: str
    refs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Purchase:
    grant: GrantCall
    refs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Revocation:
    """One revoke. When no grant has the payment (NOT_FOUND): a payment `marked` as a
    credits purchase (a refund's charge with the mark, a dispute whose amount a package's
    price can explain) is not granted yet (answer 5xx: Stripe delivers again); any other
    payment is not a credits purchase (answer 2xx)."""

    revoke: RevokeCall
    outcome: str
    refs: Mapping[str, str] = field(default_factory=dict)
    marked: bool = False


@dataclass(frozen=True)
class FetchCharge:
    """A refund failed or was canceled: its charge's amount_refunded went down, and the
    event carries neither that total, nor the charge's amount, nor its mark. The charge
    is read from Stripe's API and planned like a charge.refunded of it, `as_of` the
    failure event's `created` (plan_refund)."""

    charge_id: str
    created: int
    refs: Mapping[str, str] = field(default_factory=dict)


Plan = Acknowledge | Purchase | Revocation | FetchCharge


@dataclass(frozen=True)
class Envelope:
    event_id: str
    event_type: str
    data_object: Mapping[str, object]
    # Unix seconds: when Stripe made the event (the time of the fact it states).
    created: int


def parse_envelope(document: object) -> Envelope | None:
    """The parts of a Stripe event every handler needs; None if it is not an event."""
    if not isinstance(document, dict) or document.get("object") != "event":
        return None
    event_id, event_type, data = document.get("id"), document.get("type"), document.get("data")
    if not isinstance(event_id, str) or not STRIPE_ID_PATTERN.fullmatch(event_id):
        return None
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 100:
        return None
    data_object = data.get("object") if isinstance(data, dict) else None
    if not isinstance(data_object, dict):
        return None
    created = document.get("created")
    # Without its time an event cannot be placed among the other claims of its series.
    if not isinstance(created, int) or isinstance(created, bool):
        return None
    if not EVENT_CREATED_MIN <= created <= EVENT_CREATED_MAX:
        return None
    return Envelope(event_id, event_type, data_object, created)


def _text(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def _count(obj: Mapping[str, object], key: str) -> int | None:
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _stripe_id(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    if isinstance(value, dict):  # an expanded object instead of its id
        value = value.get("id")
    if isinstance(value, str) and STRIPE_ID_PATTERN.fullmatch(value):
        return value
    return None


def _metadata(obj: Mapping[str, object]) -> Mapping[str, object]:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def plan(envelope: Envelope, packages: PackageTable, account_metadata_key: str) -> Plan:
    """What the event calls for. `account_metadata_key` ("" = none) is where the account
    id is read when the session has no client_reference_id."""
    event_type, obj = envelope.event_type, envelope.data_object
    if event_type in PURCHASE_EVENTS:
        return plan_purchase(obj, packages, account_metadata_key)
    if event_type == REFUND_EVENT:
        return plan_refund(obj, packages, envelope.created)
    if event_type in REFUND_FAILURE_EVENTS:
        return plan_refund_update(obj, envelope.created)
    if event_type == DISPUTE_CREATED_EVENT:
        return plan_dispute_created(obj, packages)
    if event_type == DISPUTE_CLOSED_EVENT:
        return plan_dispute_closed(obj, packages)
    # Other refund.* events are deliberately ignored: charge.refunded's running
    # amount_refunded is the one source of truth for refunds, and adding both up would
    # revoke twice.
    # charge.dispute.funds_* and .updated carry nothing that created/closed do not.
    return Acknowledge("ignored")


def _account_of(session: Mapping[str, object], account_metadata_key: str) -> str | None:
    account = _text(session, "client_reference_id")
    if account is None and account_metadata_key:
        value = _metadata(session).get(account_metadata_key)
        account = value if isinstance(value, str) and value else None
    return account


def plan_purchase(
    session: Mapping[str, object], packages: PackageTable, account_metadata_key: str
) -> Plan:
    session_id = _stripe_id(session, "id")
    if session.get("object") != "checkout.session" or session_id is None:
        return Acknowledge("malformed")
    refs = {"session": session_id}
    if session.get("mode") != "payment":
        return Acknowledge("not_payment_mode", refs)
    if session.get("payment_status") != "paid":
        # `unpaid` waits for checkout.session.async_payment_succeeded.
        return Acknowledge("unpaid", refs)
    payment_intent = _stripe_id(session, "payment_intent")
    if payment_intent is None:
        return Acknowledge("unfulfillable_no_payment_intent", refs)
    refs["payment_intent"] = payment_intent
    account = _account_of(session, account_metadata_key)
    if account is None or not ACCOUNT_ID_PATTERN.fullmatch(account):
        return Acknowledge("unfulfillable_account", refs)
    package_name = _metadata(session).get("credit_package")
    package = packages.named(package_name) if isinstance(package_name, str) else None
    if package is None:
        return Acknowledge("unfulfillable_package", refs)
    refs["package"] = package.name
    amount_total, currency = _count(session, "amount_total"), _text(session, "currency")
    if amount_total != package.price_minor_units or currency != package.currency:
        return Acknowledge("unfulfillable_price_mismatch", refs)
    grant = GrantCall(
        account_id=account,
        amount=package.units,
        source=GrantSource.PURCHASE,
        idempotency_key=CHECKOUT_KEY_PREFIX + session_id,
        external_ref=payment_intent,
        description=f"Stripe Checkout purchase of {package.name}",
        metadata=(("credit_package", package.name), ("stripe_session", session_id)),
    )
    return Purchase(grant, refs)


def refund_units(package_units: int, charge_amount: int, amount_refunded: int) -> int:
    """Credits to take back for a running refund total: proportional, rounded down (the
    customer keeps a fraction of a unit rather than losing one), capped at the grant."""
    return min(package_units, package_units * amount_refunded // charge_amount)


def event_time(created: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(created, datetime.UTC)


def plan_refund(
    charge: Mapping[str, object], packages: PackageTable, created: int
) -> Acknowledge | Revocation:
    """The charge's running amount_refunded as the claim of the series `refund:<charge>`,
    as of `created`, the time of the event that told it: a newer, lower total (a refund
    failed) lowers the claim, a late delivery of an older one changes nothing."""
    charge_id, payment_intent = _stripe_id(charge, "id"), _stripe_id(charge, "payment_intent")
    if charge.get("object") != "charge" or charge_id is None:
        return Acknowledge("malformed")
    refs = {"charge": charge_id}
    if payment_intent is None:
        return Acknowledge("not_a_purchase", refs)  # not a Checkout payment
    refs["payment_intent"] = payment_intent
    amount, refunded = _count(charge, "amount"), _count(charge, "amount_refunded")
    currency = _text(charge, "currency")
    if not amount or refunded is None or currency is None:
        return Acknowledge("malformed", refs)
    mark = _metadata(charge).get(PURCHASE_MARK_KEY)
    marked = isinstance(mark, str) and bool(mark)
    # The marked package, or (a payment marked before a package was renamed, or not
    # marked) the one that sells at the charge's price.
    package = (packages.named(mark) if isinstance(mark, str) else None) or packages.priced(
        amount, currency
    )
    if package is None:
        return Acknowledge("not_a_purchase", refs)
    units = refund_units(package.units, amount, refunded)
    # Per fact: the same total at another time is another claim of the series.
    key = f"{REFUND_SERIES_PREFIX}{charge_id}:{refunded}:{created}"
    if len(key) > IDEMPOTENCY_KEY_CHARS_MAX:
        # Only a charge id far longer than Stripe's (about 27 characters) gets here.
        return Acknowledge("malformed_refund_key_too_long", refs)
    # A total below one unit is still sent: as of its time it claims nothing (a timed 0
    # is nothing), which lowers a claim that an earlier, failed refund made.
    revoke = RevokeCall(
        external_ref=payment_intent,
        amount=units,
        idempotency_key=key,
        reason="refund",
        cumulative_series=REFUND_SERIES_PREFIX + charge_id,
        as_of=event_time(created),
    )
    outcome = "refund_revoked" if units else "refund_below_one_unit"
    return Revocation(revoke, outcome, refs, marked=marked)


def plan_refund_update(refund: Mapping[str, object], created: int) -> Plan:
    """A refund that failed or was canceled: its charge must be read from Stripe
    (FetchCharge). Any other status is charge.refunded's business."""
    refund_id, status = _stripe_id(refund, "id"), _text(refund, "status")
    if refund.get("object") != "refund" or refund_id is None or status is None:
        return Acknowledge("malformed")
    refs = {"refund": refund_id}
    if status not in REFUND_UNDONE_STATUSES:
        return Acknowledge("ignored", refs)
    charge_id = _stripe_id(refund, "charge")
    if charge_id is None:
        return Acknowledge("not_a_purchase", refs)  # a refund of no charge: not Checkout
    refs["charge"] = charge_id
    payment_intent = _stripe_id(refund, "payment_intent")
    if payment_intent is not None:
        refs["payment_intent"] = payment_intent
    return FetchCharge(charge_id, created, refs)


def dispute_claim_units(packages: PackageTable, amount: int, currency: str) -> tuple[bool, int]:
    """Whether a dispute of `amount` can be of a credits purchase, and what it claims: 0
    (everything the purchase gave) when it disputes a package's whole price, or when
    several packages could be the one partly disputed (a dispute does not say which);
    else the disputed share of the one package it can be, rounded up (the money went
    back), capped at its units."""
    candidates = [
        package
        for package in packages.by_name.values()
        if package.currency == currency and package.price_minor_units >= amount
    ]
    if not candidates:
        return False, 0
    if len(candidates) > 1 or candidates[0].price_minor_units == amount:
        return True, 0
    package = candidates[0]
    share = -(-package.units * amount // package.price_minor_units)  # ceiling division
    return True, min(package.units, share)


def dispute_revoke(dispute_id: str, payment_intent: str, units: int = 0) -> RevokeCall:
    """The dispute's claim on the purchase: `units`, or everything it gave (0), as a
    series of its own, so that the claim stands beside a refund's and a win can withdraw
    it. Opened and lost send exactly this request, so whichever comes first makes the
    claim (and if their amounts differ, the series keeps the higher)."""
    key = DISPUTE_KEY_PREFIX + dispute_id + (f":{units}" if units else "")
    return RevokeCall(
        external_ref=payment_intent,
        amount=units,
        idempotency_key=key,
        reason="dispute",
        cumulative_series=DISPUTE_SERIES_PREFIX + dispute_id,
    )


def dispute_withdrawal(dispute_id: str, payment_intent: str) -> RevokeCall:
    """A dispute won: its claim is withdrawn for good. The service cancels what the claim
    still owed and gives back what it took, whenever it took it; a won that arrives before
    the opening makes the opening claim nothing."""
    return RevokeCall(
        external_ref=payment_intent,
        amount=0,
        idempotency_key=DISPUTE_WON_KEY_PREFIX + dispute_id,
        reason="dispute won",
        cumulative_series=DISPUTE_SERIES_PREFIX + dispute_id,
        withdraw=True,
    )


@dataclass(frozen=True)
class _Dispute:
    dispute_id: str
    payment_intent: str
    status: str
    refs: dict[str, str]
    # Its amount could be (part of) a package's price: when no grant has the payment,
    # the purchase is not granted yet.
    possible_purchase: bool
    units: int


def _dispute(dispute: Mapping[str, object], packages: PackageTable) -> _Dispute | Acknowledge:
    """A dispute of a credits purchase, or the acknowledgement of one that needs
    nothing: malformed, an inquiry (which revokes nothing, so it never gives back
    anything either), or not on a payment intent."""
    dispute_id, payment_intent = _stripe_id(dispute, "id"), _stripe_id(dispute, "payment_intent")
    status = _text(dispute, "status")
    if dispute.get("object") != "dispute" or dispute_id is None or status is None:
        return Acknowledge("malformed")
    refs = {"dispute": dispute_id}
    if payment_intent is not None:
        refs["payment_intent"] = payment_intent
    if status.startswith(INQUIRY_STATUS_PREFIX):
        return Acknowledge("inquiry_ignored", refs)
    if payment_intent is None:
        return Acknowledge("not_a_purchase", refs)
    amount, currency = _count(dispute, "amount"), _text(dispute, "currency")
    if not amount or currency is None:
        return Acknowledge("malformed", refs)
    possible, units = dispute_claim_units(packages, amount, currency)
    return _Dispute(dispute_id, payment_intent, status, refs, possible, units)


def _claim(d: _Dispute, outcome: str) -> Revocation:
    revoke = dispute_revoke(d.dispute_id, d.payment_intent, d.units)
    return Revocation(revoke, outcome, d.refs, marked=d.possible_purchase)


def plan_dispute_created(dispute: Mapping[str, object], packages: PackageTable) -> Plan:
    d = _dispute(dispute, packages)
    if isinstance(d, Acknowledge):
        return d
    return _claim(d, "dispute_revoked")


def plan_dispute_closed(dispute: Mapping[str, object], packages: PackageTable) -> Plan:
    d = _dispute(dispute, packages)
    if isinstance(d, Acknowledge):
        return d
    if d.status in DISPUTE_WON_STATUSES:
        withdrawal = dispute_withdrawal(d.dispute_id, d.payment_intent)
        return Revocation(withdrawal, "dispute_won_restored", d.refs, marked=d.possible_purchase)
    if d.status == DISPUTE_LOST_STATUS:
        # The opening's request again: "lost before created" claims too, once.
        return _claim(d, "dispute_lost")
    return Acknowledge("dispute_status_unexpected", d.refs)
