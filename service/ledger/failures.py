"""The one list of failures a caller can see. Each is defined once here: its stable
reason (ErrorInfo.reason), the gRPC code it leaves with (by name: this module imports no
gRPC), its fixed message, and for the money rules the SQLSTATE that
service/store/sql/ledger.sql raises. service/access/errors.py and
service/store/postgres.py derive their maps from this list; tests/sql/test_constants.py
checks the SQLSTATEs against the SQL source.

Messages are fixed sentences: never an amount, a balance, SQL, a path or a stack trace.
"""

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class Failure(Exception):
    """An answer the caller is meant to see."""

    reason: ClassVar[str]
    code: ClassVar[str]  # a grpc.StatusCode name
    message: ClassVar[str]
    # Raised by the ledger's SQL functions with this SQLSTATE (class 'CR'), if any.
    sqlstate: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__(self.message)

    @property
    def metadata(self) -> Mapping[str, str]:
        """What ErrorInfo's metadata carries besides the reason: never an amount."""
        return {}

    @classmethod
    def from_database(cls, detail: str | None) -> "Failure":
        """The failure for its SQLSTATE, given the error's DETAIL (which most ignore)."""
        return cls()


class InvalidRequest(Failure):
    reason = "INVALID_REQUEST"
    code = "INVALID_ARGUMENT"
    message = "the request has invalid fields"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        super().__init__()
        self.violations = tuple(violations)


class GrantExpiryPassed(InvalidRequest):
    """A new grant whose expires_at is not in the future. Decided in the database, after a
    replay of the same request has been answered from its stored result."""

    sqlstate = "CR009"

    def __init__(self) -> None:
        super().__init__([FieldViolation("expires_at", "must be in the future")])


class PricedAmountTooLarge(InvalidRequest):
    """quantity * the unit price in effect is above the amount maximum. Decided in the
    database, where the price is read, after a replay has been answered."""

    sqlstate = "CR051"

    def __init__(self) -> None:
        super().__init__(
            [FieldViolation("quantity", "priced at the unit price, exceeds the amount maximum")]
        )


class InsufficientCredits(Failure):
    reason = "INSUFFICIENT_CREDITS"
    code = "FAILED_PRECONDITION"
    message = "the account does not have enough credits"
    sqlstate = "CR001"


class ReservationNotFound(Failure):
    reason = "RESERVATION_NOT_FOUND"
    code = "NOT_FOUND"
    message = "reservation not found"
    sqlstate = "CR002"


class ReservationNotActive(Failure):
    reason = "RESERVATION_NOT_ACTIVE"
    code = "FAILED_PRECONDITION"
    message = "the reservation is no longer active"
    sqlstate = "CR003"


class ReservationLifetimeExceeded(Failure):
    """An extension would keep the reservation past its creation plus the lifetime cap
    (CREDITS_RESERVATION_LIFETIME_MAX_SECONDS). Refused rather than shortened, so that a
    caller never believes it holds credits longer than it does."""

    reason = "RESERVATION_LIFETIME_EXCEEDED"
    code = "FAILED_PRECONDITION"
    message = "the extension would keep the reservation past its lifetime cap"
    sqlstate = "CR011"


class IdempotencyKeyReused(Failure):
    reason = "IDEMPOTENCY_KEY_REUSED"
    code = "ALREADY_EXISTS"
    message = "the idempotency key was already used for a different request"
    sqlstate = "CR004"


class GrantNotFound(Failure):
    reason = "GRANT_NOT_FOUND"
    code = "NOT_FOUND"
    message = "grant not found"
    sqlstate = "CR005"


class CaptureExceedsReservation(Failure):
    reason = "CAPTURE_EXCEEDS_RESERVATION"
    code = "FAILED_PRECONDITION"
    message = "the amount to confirm exceeds the reserved amount"
    sqlstate = "CR006"


class SignupBonusExists(Failure):
    reason = "SIGNUP_BONUS_EXISTS"
    code = "ALREADY_EXISTS"
    message = "the account already received its signup bonus"
    sqlstate = "CR007"


class ExternalRefExists(Failure):
    reason = "EXTERNAL_REF_EXISTS"
    code = "ALREADY_EXISTS"
    message = "a grant with this external reference already exists"
    sqlstate = "CR008"


class AccountCreditsLimit(Failure):
    reason = "ACCOUNT_CREDITS_LIMIT"
    code = "FAILED_PRECONDITION"
    message = "the account cannot hold more credits"
    sqlstate = "CR010"


class AccountFrozen(Failure):
    """Ops froze the account: no new holds; what it holds can still be confirmed or
    released."""

    reason = "ACCOUNT_FROZEN"
    code = "FAILED_PRECONDITION"
    message = "the account is frozen"
    sqlstate = "CR012"


class SpendLimitExceeded(Failure):
    """A Reserve, an overrun or a Transfer would pass one of the account's (a Transfer's
    source's) spend limits. The refusal names the limit (`day`, `month`, `rolling`) and
    when it resets (RFC 3339, UTC) in ErrorInfo metadata; never an amount."""

    reason = "SPEND_LIMIT_EXCEEDED"
    code = "FAILED_PRECONDITION"
    message = "the request would pass one of the account's spend limits"
    sqlstate = "CR030"

    def __init__(self, limit: str = "", resets_at: str = "") -> None:
        super().__init__()
        self.limit = limit
        self.resets_at = resets_at

    @property
    def metadata(self) -> Mapping[str, str]:
        return {"limit": self.limit, "resets_at": self.resets_at}

    @classmethod
    def from_database(cls, detail: str | None) -> "SpendLimitExceeded":
        """From the JSON DETAIL credits_check_spend raises with."""
        named = json.loads(detail or "{}")
        return cls(str(named.get("limit", "")), str(named.get("resets_at", "")))


class PriceNotFound(Failure):
    """A Reserve by quantity for a job type with no price in effect: never priced, not
    yet in effect, or retired."""

    reason = "PRICE_NOT_FOUND"
    code = "FAILED_PRECONDITION"
    message = "the job type has no price in effect"
    sqlstate = "CR050"


class ReservationNotPriced(Failure):
    """A Confirm by quantity of a reservation whose amount the caller gave: there is no
    unit price to capture the quantity at."""

    reason = "RESERVATION_NOT_PRICED"
    code = "FAILED_PRECONDITION"
    message = "the reservation was not priced by quantity"
    sqlstate = "CR052"


class EventCursorExpired(Failure):
    """A WatchEvents cursor older than the events retained (CREDITS_EVENT_RETENTION_DAYS):
    events after it have been deleted, so the stream cannot resume there exactly."""

    reason = "EVENT_CURSOR_EXPIRED"
    code = "OUT_OF_RANGE"
    message = (
        "the cursor is older than the retained events; start again from the oldest"
        " retained event or from now"
    )
    sqlstate = "CR020"


class StoreUnavailable(Failure):
    """The database cannot be reached; the request did not happen (or will be replayed)."""

    reason = "DATABASE_UNAVAILABLE"
    code = "UNAVAILABLE"
    message = "the service is temporarily unavailable; retry later"


class StoreTimeout(Failure):
    """The call ran out of time in the database (the client's deadline or the statement
    timeout) and was rolled back."""

    reason = "DEADLINE_EXCEEDED"
    code = "DEADLINE_EXCEEDED"
    message = "the deadline ran out before the work was done; nothing changed"


class Unauthenticated(Failure):
    reason = "UNAUTHENTICATED"
    code = "UNAUTHENTICATED"
    message = "missing or invalid credentials"


class PermissionDenied(Failure):
    reason = "PERMISSION_DENIED"
    code = "PERMISSION_DENIED"
    message = "this caller may not call this RPC"


class RateLimited(Failure):
    reason = "RATE_LIMITED"
    code = "RESOURCE_EXHAUSTED"
    message = "rate limit exceeded; retry after the delay in RetryInfo"

    def __init__(self, subject: str, limit: str, retry_after_seconds: float) -> None:
        super().__init__()
        self.subject = subject  # what is limited, e.g. "caller:backend/Reserve"
        self.limit = limit  # e.g. "50 per 1 second"
        self.retry_after_seconds = retry_after_seconds


class RateLimitUnavailable(Failure):
    """The rate-limit store cannot be reached: the call is refused, never let through."""

    reason = "RATE_LIMIT_UNAVAILABLE"
    code = "UNAVAILABLE"
    message = "the service is temporarily unavailable; retry later"


def _failures_below(cls: type[Failure]) -> Iterator[type[Failure]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _failures_below(sub)


# Every failure defined above: derived, so a new one cannot be left out of the maps.
ALL: tuple[type[Failure], ...] = tuple(_failures_below(Failure))
BY_SQLSTATE: Mapping[str, type[Failure]] = {f.sqlstate: f for f in ALL if f.sqlstate}
