"""Carry out a plan against the service and decide what Stripe is told.

2xx only once the service has durably done the work or had done it before, or when
there is nothing to do (a refund or dispute of a payment that is not a credits
purchase); 5xx whenever a retry by Stripe can still help (service unreachable, a marked
purchase not granted yet) or a fix by an operator is needed first (the service refused
the request: a configuration bug) -- Stripe keeps retrying for three days, so nothing is
lost meanwhile.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.events import (
    Acknowledge,
    FetchCharge,
    GrantCall,
    Plan,
    Purchase,
    Revocation,
    RevokeCall,
    plan_refund,
)
from gateway.packages import PackageTable
from gateway.service_calls import Failure, Granted, Revoked, ServiceError
from gateway.stripe_api import Charges, StripeRefused, StripeUnavailable

OK = 200
INTERNAL_ERROR = 500
UNAVAILABLE = 503

# Outcomes an operator must look at: a paid purchase that granted nothing (or a failed
# refund whose credits cannot come back: no Stripe API key), a request the service or
# Stripe refused, a replay that no longer matches what was done.
ATTENTION_OUTCOME_PREFIXES = ("unfulfillable", "malformed", "conflict", "refused")


class Credits(Protocol):
    async def grant(self, call: GrantCall) -> Granted: ...

    async def revoke(self, call: RevokeCall) -> Revoked: ...


@dataclass(frozen=True)
class Result:
    status_code: int
    outcome: str
    fields: Mapping[str, object] = field(default_factory=dict)


def _failed(error: ServiceError, *, not_found_status: int) -> Result:
    fields = {"rpc": error.rpc, "code": error.code, "reason": error.reason}
    if error.failure is Failure.RETRY_LATER:
        return Result(UNAVAILABLE, "service_unavailable", fields)
    if error.failure is Failure.NOT_FOUND:
        return Result(not_found_status, "purchase_not_granted_yet", fields)
    if error.failure is Failure.CONFLICT:
        # Same key (or same payment) already done with a different request: the
        # effect exists, and a retry would only conflict again.
        return Result(OK, "conflict_already_done", fields)
    return Result(INTERNAL_ERROR, "refused_by_service", fields)


async def _purchase(plan: Purchase, credits: Credits) -> Result:
    try:
        granted = await credits.grant(plan.grant)
    except ServiceError as error:
        return _failed(error, not_found_status=INTERNAL_ERROR)
    # A delivery of a purchase granted before: the service answered with that grant.
    outcome = "replayed" if granted.replayed else "granted"
    return Result(OK, outcome, {"grant_id": granted.grant_id, "units": plan.grant.amount})


def _revoked_fields(revoked: Revoked) -> dict[str, object]:
    return {
        "revoked_units": revoked.revoked_amount,
        "unrecovered_units": revoked.unrecovered_amount,
        "restored_units": revoked.restored_amount,
        "cancelled_units": revoked.cancelled_amount,
    }


async def _revocation(plan: Revocation, credits: Credits) -> Result:
    try:
        revoked = await credits.revoke(plan.revoke)
    except ServiceError as error:
        if error.failure is Failure.NOT_FOUND and not plan.marked:
            # No grant has this payment, and nothing says it is a credits purchase: a
            # payment of something else on the same Stripe account. Retrying would fail
            # until Stripe gives up (and disables the endpoint).
            return Result(OK, "not_a_purchase", {"rpc": error.rpc, "code": error.code})
        return _failed(error, not_found_status=UNAVAILABLE)
    return Result(OK, plan.outcome, _revoked_fields(revoked))


async def charge_refund(
    plan: FetchCharge, charges: Charges | None, packages: PackageTable
) -> Acknowledge | Revocation | Result:
    """A refund failed or was canceled: the charge as Stripe has it now, planned like a
    charge.refunded of it as of the failure event. Without an API key nothing can be read:
    acknowledged (Stripe would retry in vain) under an outcome that needs attention, so an
    operator gives the credits back by hand."""
    if charges is None:
        return Result(OK, "unfulfillable_refund_failed_no_api_key")
    try:
        charge = await charges.retrieve(plan.charge_id)
    except StripeUnavailable:
        return Result(UNAVAILABLE, "stripe_unavailable")
    except StripeRefused:
        return Result(INTERNAL_ERROR, "refused_by_stripe")
    if charge.get("id") != plan.charge_id:
        return Result(INTERNAL_ERROR, "refused_by_stripe_wrong_charge")
    return plan_refund(charge, packages, plan.created)


async def fulfil(
    plan: Plan,
    credits: Credits,
    charges: Charges | None = None,
    packages: PackageTable | None = None,
) -> Result:
    """`charges` (None: no Stripe API key) and `packages` serve a failed refund only."""
    if isinstance(plan, FetchCharge):
        if packages is None:
            raise ValueError("a failed refund needs the package table")
        fetched = await charge_refund(plan, charges, packages)
        if isinstance(fetched, Result):
            return fetched
        plan = fetched
    if isinstance(plan, Acknowledge):
        return Result(OK, plan.outcome)
    if isinstance(plan, Purchase):
        return await _purchase(plan, credits)
    return await _revocation(plan, credits)


def needs_attention(outcome: str) -> bool:
    return outcome.startswith(ATTENTION_OUTCOME_PREFIXES)
