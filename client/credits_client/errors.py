"""Every failure of a call, as an exception: one class per ErrorInfo reason of the
service's error table (docs/contract.md, "Errors"), all under `CreditsError`.

A failure is recognized by its `google.rpc.Status` (ErrorInfo of domain `credits.v1`),
never by its message. Failures that carry no ErrorInfo (the service unreachable, a
deadline that ran out on the client, an overloaded server) are sorted by their code.
"""

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf import message as protobuf_message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from credits_client.results import ReservationStatus, Reserved

DOMAIN = "credits.v1"
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, from the error's `BadRequest` detail."""

    field: str
    description: str


class CreditsError(Exception):
    """A call that failed. `code` is the gRPC status code, `reason` the ErrorInfo reason
    ("" when the failure carries none), `request_id` the service's id of the call (its
    log lines carry it), `idempotency_key` the key the call sent (None for calls without
    one), `attempts` how many times it was sent."""

    # The ErrorInfo reason this class stands for; "" for the classes sorted by code.
    REASON: ClassVar[str] = ""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        request_id: str = "",
        idempotency_key: str | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay_seconds: float | None = None,
        attempts: int = 1,
        info_metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        # ErrorInfo's metadata as the service sent it (e.g. which spend limit).
        self.info_metadata: Mapping[str, str] = dict(info_metadata or {})
        self.code = code
        self.message = message
        self.reason = reason
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self.field_violations = field_violations
        # How long the service asked the caller to wait before trying again (RetryInfo).
        self.retry_delay_seconds = retry_delay_seconds
        self.attempts = attempts

    def __str__(self) -> str:
        text = f"{self.code.name}"
        if self.reason:
            text += f" {self.reason}"
        text += f": {self.message}"
        if self.field_violations:
            text += " (" + ", ".join(f"{v.field}: {v.description}" for v in self.field_violations)
            text += ")"
        if self.request_id:
            text += f" [request {self.request_id}]"
        return text


class InvalidRequest(CreditsError):
    """Bad fields; `field_violations` names each one. Nothing changed."""

    REASON = "INVALID_REQUEST"


class InsufficientCredits(CreditsError):
    REASON = "INSUFFICIENT_CREDITS"


class ReservationNotActive(CreditsError):
    REASON = "RESERVATION_NOT_ACTIVE"


class JobAlreadySettled(ReservationNotActive):
    """Raised by `hold()` on entry, before the body runs: the Reserve with this
    idempotency key answered a reservation that is no longer active -- an earlier run
    with the same key already confirmed it, released it or let it expire. The work is
    not run again; `reservation` is that settled reservation (`.status` says how it
    ended). A key names one attempt: retry a failed job with a new key. Detected by
    the client, so `request_id` is empty."""

    def __init__(self, reservation: Reserved, status: ReservationStatus) -> None:
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"job already settled: reservation {reservation.reservation_id} of account "
            f"{reservation.account_id} (idempotency key {reservation.idempotency_key}) is "
            f"{status.value}: the work was not run again (a key names one attempt; retry a "
            "failed job with a new key)",
            reason=self.REASON,
            idempotency_key=reservation.idempotency_key,
        )
        self.reservation = reservation
        # CONFIRMED, RELEASED or EXPIRED (also for one still active past its expires_at).
        self.status = status


class ReservationLifetimeExceeded(CreditsError):
    """An extension past the reservation's `extendable_until`; nothing changed."""

    REASON = "RESERVATION_LIFETIME_EXCEEDED"


class CaptureExceedsReservation(CreditsError):
    REASON = "CAPTURE_EXCEEDS_RESERVATION"


class AccountCreditsLimit(CreditsError):
    REASON = "ACCOUNT_CREDITS_LIMIT"


class AccountFrozen(CreditsError):
    REASON = "ACCOUNT_FROZEN"


class SpendLimitExceeded(CreditsError):
    """A Reserve, an overrun or a Transfer would pass one of the account's (a Transfer's
    source's) spend limits; nothing changed. `limit` names the first that would ("day",
    "month" or "rolling") and `resets_at` when its period resets (None if the service did
    not say)."""

    REASON = "SPEND_LIMIT_EXCEEDED"

    @property
    def limit(self) -> str:
        return self.info_metadata.get("limit", "")

    @property
    def resets_at(self) -> datetime.datetime | None:
        text = self.info_metadata.get("resets_at", "")
        return datetime.datetime.fromisoformat(text) if text else None


class PriceNotFound(CreditsError):
    """A Reserve by quantity for a job type with no price in effect (unknown, not yet in
    effect, or retired); nothing changed."""

    REASON = "PRICE_NOT_FOUND"


class ReservationNotPriced(CreditsError):
    """A Confirm by quantity of a reservation reserved by amount; nothing changed."""

    REASON = "RESERVATION_NOT_PRICED"


class EventCursorExpired(CreditsError):
    """A watch_events cursor older than the service's event retention: start again
    from the oldest retained event or from now."""

    REASON = "EVENT_CURSOR_EXPIRED"


class ReservationNotFound(CreditsError):
    REASON = "RESERVATION_NOT_FOUND"


class GrantNotFound(CreditsError):
    REASON = "GRANT_NOT_FOUND"


class IdempotencyKeyReused(CreditsError):
    REASON = "IDEMPOTENCY_KEY_REUSED"


class SignupBonusExists(CreditsError):
    REASON = "SIGNUP_BONUS_EXISTS"


class ExternalRefExists(CreditsError):
    REASON = "EXTERNAL_REF_EXISTS"


class Unauthenticated(CreditsError):
    REASON = "UNAUTHENTICATED"


class PermissionDenied(CreditsError):
    REASON = "PERMISSION_DENIED"


class ResourceExhausted(CreditsError):
    """The service is overloaded (RESOURCE_EXHAUSTED without a reason), or, as the
    subclass RateLimited, a rate limit is reached."""


class RateLimited(ResourceExhausted):
    """`retry_delay_seconds` says when the limit lets the call through."""

    REASON = "RATE_LIMITED"


class Unavailable(CreditsError):
    """The service cannot be reached (UNAVAILABLE without a reason), or, as a subclass,
    a dependency of it cannot. The call did not happen; it is safe to retry."""


class DatabaseUnavailable(Unavailable):
    REASON = "DATABASE_UNAVAILABLE"


class RateLimitUnavailable(Unavailable):
    REASON = "RATE_LIMIT_UNAVAILABLE"


class DeadlineExceeded(CreditsError):
    """The deadline ran out: in the service's database (reason DEADLINE_EXCEEDED:
    nothing changed) or on the way (no reason: the call may or may not have happened;
    a retry with the same idempotency key settles it)."""

    REASON = "DEADLINE_EXCEEDED"


class InternalError(CreditsError):
    """Something unexpected in the service; its log has the detail under `request_id`."""

    REASON = "INTERNAL"


BY_REASON: Mapping[str, type[CreditsError]] = {
    error.REASON: error
    for error in (
        InvalidRequest,
        InsufficientCredits,
        ReservationNotActive,
        ReservationLifetimeExceeded,
        CaptureExceedsReservation,
        AccountCreditsLimit,
        AccountFrozen,
        SpendLimitExceeded,
        PriceNotFound,
        ReservationNotPriced,
        EventCursorExpired,
        ReservationNotFound,
        GrantNotFound,
        IdempotencyKeyReused,
        SignupBonusExists,
        ExternalRefExists,
        Unauthenticated,
        PermissionDenied,
        RateLimited,
        DatabaseUnavailable,
        RateLimitUnavailable,
        DeadlineExceeded,
        InternalError,
    )
}
# Failures without an ErrorInfo of the service: transport, client deadline, overload.
BY_CODE: Mapping[grpc.StatusCode, type[CreditsError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: InternalError,
}


@dataclass(frozen=True)
class _Details:
    reason: str = ""
    info_metadata: Mapping[str, str] | None = None
    field_violations: tuple[FieldViolation, ...] = ()
    retry_delay_seconds: float | None = None


def _unpack(detail: Any, message: protobuf_message.Message) -> bool:
    if not detail.Is(message.DESCRIPTOR):
        return False
    detail.Unpack(message)
    return True


def _details(status: status_pb2.Status | None) -> _Details:
    reason, info_metadata, delay = "", None, None
    violations: tuple[FieldViolation, ...] = ()
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        retry_info = error_details_pb2.RetryInfo()
        if _unpack(detail, info) and info.domain == DOMAIN and not reason:
            reason, info_metadata = info.reason, dict(info.metadata)
        elif _unpack(detail, bad_request):
            violations = tuple(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
        elif _unpack(detail, retry_info):
            delay = retry_info.retry_delay.ToNanoseconds() / 1e9
    return _Details(reason, info_metadata, violations, delay)


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except ValueError:  # code or message inconsistent with the rich status: ignore it
        return None
    return status


def _request_id(error: grpc.aio.AioRpcError, details: _Details) -> str:
    for metadata in (error.initial_metadata(), error.trailing_metadata()):
        for key, value in metadata or ():
            if key == REQUEST_ID_HEADER:
                return str(value)
    return (details.info_metadata or {}).get("request_id", "")


def from_rpc_error(
    error: grpc.aio.AioRpcError, *, idempotency_key: str | None, attempts: int
) -> CreditsError:
    """The exception for a failed call, with everything its status says."""
    code: grpc.StatusCode = error.code()
    details = _details(_rich_status(error))
    error_class = BY_REASON.get(details.reason) or BY_CODE.get(code, CreditsError)
    return error_class(
        code,
        error.details() or "",
        reason=details.reason,
        request_id=_request_id(error, details),
        idempotency_key=idempotency_key,
        field_violations=details.field_violations,
        retry_delay_seconds=details.retry_delay_seconds,
        attempts=attempts,
        info_metadata=details.info_metadata,
    )
