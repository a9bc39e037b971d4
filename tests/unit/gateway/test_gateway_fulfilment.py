"""What Stripe is told for each way the service can answer."""

import datetime
from dataclasses import dataclass, field

import pytest

from gateway.events import (
    Acknowledge,
    FetchCharge,
    GrantCall,
    GrantSource,
    Purchase,
    Revocation,
    RevokeCall,
)
from gateway.fulfilment import fulfil, needs_attention
from gateway.packages import PackageTable
from gateway.service_calls import Failure, Granted, Revoked, ServiceError
from gateway.stripe_api import StripeRefused, StripeUnavailable

GRANT = GrantCall("acct_1", 1000, GrantSource.PURCHASE, "checkout:cs_1", "pi_1", "", ())
REVOKE = RevokeCall("pi_1", 400, "refund:ch_1:400", "refund", "refund:ch_1")


@dataclass
class FakeCredits:
    """Answers from a script; records every call."""

    grant_error: ServiceError | None = None
    revoke_error: ServiceError | None = None
    revoked: Revoked = field(default_factory=lambda: Revoked("acct_1", 600, 0))
    replayed: bool = False
    calls: list[GrantCall | RevokeCall] = field(default_factory=list)

    async def grant(self, call: GrantCall) -> Granted:
        self.calls.append(call)
        if self.grant_error:
            raise self.grant_error
        return Granted("grant-1", self.replayed)

    async def revoke(self, call: RevokeCall) -> Revoked:
        self.calls.append(call)
        if self.revoke_error:
            raise self.revoke_error
        return self.revoked


def error(failure: Failure, code: str = "X", reason: str = "") -> ServiceError:
    return ServiceError(failure, "Grant", code, reason)


async def test_acknowledged_events_call_nothing() -> None:
    credits = FakeCredits()

    result = await fulfil(Acknowledge("unpaid"), credits)

    assert (result.status_code, result.outcome, credits.calls) == (200, "unpaid", [])


async def test_a_purchase_is_acknowledged_once_granted() -> None:
    credits = FakeCredits()

    result = await fulfil(Purchase(GRANT), credits)

    assert (result.status_code, result.outcome) == (200, "granted")
    assert credits.calls == [GRANT]


async def test_a_purchase_the_service_had_granted_before_is_replayed() -> None:
    credits = FakeCredits(replayed=True)

    result = await fulfil(Purchase(GRANT), credits)

    assert (result.status_code, result.outcome) == (200, "replayed")
    assert result.fields["grant_id"] == "grant-1"


@pytest.mark.parametrize(
    ("failure", "status", "outcome"),
    [
        (Failure.RETRY_LATER, 503, "service_unavailable"),
        (Failure.CONFLICT, 200, "conflict_already_done"),
        (Failure.MISCONFIGURED, 500, "refused_by_service"),
        (Failure.NOT_FOUND, 500, "purchase_not_granted_yet"),
    ],
)
async def test_a_failed_grant(failure: Failure, status: int, outcome: str) -> None:
    result = await fulfil(Purchase(GRANT), FakeCredits(grant_error=error(failure)))

    assert (result.status_code, result.outcome) == (status, outcome)


@pytest.mark.parametrize(
    ("failure", "marked", "status", "outcome"),
    [
        (Failure.RETRY_LATER, True, 503, "service_unavailable"),
        (Failure.RETRY_LATER, False, 503, "service_unavailable"),
        # A marked purchase not granted yet: Stripe must deliver the refund again later.
        (Failure.NOT_FOUND, True, 503, "purchase_not_granted_yet"),
        # No grant, no mark: a payment of something else; retrying could never succeed.
        (Failure.NOT_FOUND, False, 200, "not_a_purchase"),
        (Failure.CONFLICT, True, 200, "conflict_already_done"),
        (Failure.MISCONFIGURED, True, 500, "refused_by_service"),
        (Failure.MISCONFIGURED, False, 500, "refused_by_service"),
    ],
)
async def test_a_failed_revocation(
    failure: Failure, marked: bool, status: int, outcome: str
) -> None:
    result = await fulfil(
        Revocation(REVOKE, "refund_revoked", marked=marked),
        FakeCredits(revoke_error=error(failure)),
    )

    assert (result.status_code, result.outcome) == (status, outcome)


async def test_a_revocation_reports_what_it_could_not_take_back() -> None:
    credits = FakeCredits(revoked=Revoked("acct_1", 300, 100))

    result = await fulfil(Revocation(REVOKE, "refund_revoked"), credits)

    assert result.status_code == 200
    assert result.fields == {
        "revoked_units": 300,
        "unrecovered_units": 100,
        "restored_units": 0,
        "cancelled_units": 0,
    }


CHARGE = {
    "id": "ch_1",
    "object": "charge",
    "amount": 1000,
    "amount_refunded": 100,
    "currency": "usd",
    "payment_intent": "pi_1",
    "metadata": {"credit_package": "credits_1000"},
}
FAILED_AT = 1_795_407_200


@dataclass
class FakeCharges:
    """Stripe's charges from a script (the real HTTP read: tests/integration/gateway)."""

    charge: dict[str, object] = field(default_factory=lambda: dict(CHARGE))
    error: Exception | None = None
    reads: list[str] = field(default_factory=list)

    async def retrieve(self, charge_id: str) -> dict[str, object]:
        self.reads.append(charge_id)
        if self.error:
            raise self.error
        return self.charge


async def test_a_failed_refund_claims_its_charges_new_total_as_of_the_failure(
    packages: PackageTable,
) -> None:
    credits, charges = FakeCredits(), FakeCharges()

    result = await fulfil(FetchCharge("ch_1", FAILED_AT), credits, charges, packages)

    assert (result.status_code, result.outcome) == (200, "refund_revoked")
    assert charges.reads == ["ch_1"]
    assert credits.calls == [
        RevokeCall(
            "pi_1",
            100,
            f"refund:ch_1:100:{FAILED_AT}",
            "refund",
            "refund:ch_1",
            as_of=datetime.datetime.fromtimestamp(FAILED_AT, datetime.UTC),
        )
    ]


async def test_a_failed_refund_without_an_api_key_needs_attention_and_calls_nothing(
    packages: PackageTable,
) -> None:
    credits = FakeCredits()

    result = await fulfil(FetchCharge("ch_1", FAILED_AT), credits, None, packages)

    assert (result.status_code, result.outcome) == (200, "unfulfillable_refund_failed_no_api_key")
    assert needs_attention(result.outcome)
    assert credits.calls == []


@pytest.mark.parametrize(
    ("error", "status", "outcome"),
    [
        (StripeUnavailable("down"), 503, "stripe_unavailable"),
        (StripeRefused("401"), 500, "refused_by_stripe"),
    ],
)
async def test_stripe_failing_to_answer_is_retried_and_refusing_needs_a_fix(
    packages: PackageTable, error: Exception, status: int, outcome: str
) -> None:
    credits = FakeCredits()

    result = await fulfil(
        FetchCharge("ch_1", FAILED_AT), credits, FakeCharges(error=error), packages
    )

    assert (result.status_code, result.outcome, credits.calls) == (status, outcome, [])


async def test_a_charge_that_is_not_the_one_asked_for_is_refused(packages: PackageTable) -> None:
    credits = FakeCredits()
    charges = FakeCharges(charge={**CHARGE, "id": "ch_other"})

    result = await fulfil(FetchCharge("ch_1", FAILED_AT), credits, charges, packages)

    assert (result.status_code, result.outcome, credits.calls) == (
        500,
        "refused_by_stripe_wrong_charge",
        [],
    )
