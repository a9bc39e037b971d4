"""The one table from errors to gRPC statuses, and the rich status each carries.

Every failure leaves with a `google.rpc.Status` holding an ErrorInfo (domain
`credits.v1`, a stable reason). Messages are fixed strings: no amount, balance, SQL,
driver text, path or stack trace ever reaches a client.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import ledger

DOMAIN = "credits.v1"


class Refused(Exception):
    """The interceptor chain refused the call before any servicer ran."""

    message: ClassVar[str]

    def __init__(self) -> None:
        super().__init__(self.message)


class Unauthenticated(Refused):
    message = "missing or invalid credentials"


class PermissionDenied(Refused):
    message = "this caller may not call this RPC"


class RateLimited(Refused):
    message = "rate limit exceeded; retry after the delay in RetryInfo"

    def __init__(self, subject: str, limit: str, retry_after_seconds: float) -> None:
        super().__init__()
        self.subject = subject  # what is limited, e.g. "caller:backend/Reserve"
        self.limit = limit  # e.g. "50 per 1 second"
        self.retry_after_seconds = retry_after_seconds


class RateLimitUnavailable(Exception):
    """The rate-limit store cannot be reached: the call is refused, never let through."""


@dataclass(frozen=True)
class Mapped:
    code: grpc.StatusCode
    reason: str


STATUS_OF: Mapping[type[Exception], Mapped] = {
    ledger.InvalidRequest: Mapped(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    ledger.InsufficientCredits: Mapped(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS"),
    ledger.ReservationNotActive: Mapped(
        grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_ACTIVE"
    ),
    ledger.CaptureExceedsReservation: Mapped(
        grpc.StatusCode.FAILED_PRECONDITION, "CAPTURE_EXCEEDS_RESERVATION"
    ),
    ledger.ReservationNotFound: Mapped(grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND"),
    ledger.GrantNotFound: Mapped(grpc.StatusCode.NOT_FOUND, "GRANT_NOT_FOUND"),
    ledger.IdempotencyKeyReused: Mapped(grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"),
    ledger.SignupBonusExists: Mapped(grpc.StatusCode.ALREADY_EXISTS, "SIGNUP_BONUS_EXISTS"),
    ledger.ExternalRefExists: Mapped(grpc.StatusCode.ALREADY_EXISTS, "EXTERNAL_REF_EXISTS"),
    ledger.StoreUnavailable: Mapped(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ledger.StoreTimeout: Mapped(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    Unauthenticated: Mapped(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    PermissionDenied: Mapped(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    RateLimited: Mapped(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    RateLimitUnavailable: Mapped(grpc.StatusCode.UNAVAILABLE, "RATE_LIMIT_UNAVAILABLE"),
}
UNAVAILABLE_MESSAGE = "the service is temporarily unavailable; retry later"
TIMEOUT_MESSAGE = "the deadline ran out before the work was done; nothing changed"
INTERNAL_REASON = "INTERNAL"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def build(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    metadata: Mapping[str, str] | None = None,
    details: Iterable[object] = (),
) -> grpc.Status:
    """A status with its ErrorInfo first, then any further details."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    status = status_pb2.Status(
        code=code.value[0],
        message=message,
        details=[_pack(info), *(_pack(d) for d in details)],
    )
    return rpc_status.to_status(status)


def for_known(exc: Exception) -> grpc.Status | None:
    """The status of an error the table knows, or None."""
    mapped = STATUS_OF.get(type(exc))
    if mapped is None:
        return None
    if isinstance(exc, ledger.InvalidRequest):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
        return build(mapped.code, mapped.reason, exc.message, details=[bad_request])
    if isinstance(exc, RateLimited):
        return _rate_limited(exc, mapped)
    if isinstance(exc, ledger.LedgerError | Refused):
        return build(mapped.code, mapped.reason, exc.message)
    if isinstance(exc, ledger.StoreTimeout):
        return build(mapped.code, mapped.reason, TIMEOUT_MESSAGE)
    return build(mapped.code, mapped.reason, UNAVAILABLE_MESSAGE)


def _rate_limited(exc: RateLimited, mapped: Mapped) -> grpc.Status:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(exc.retry_after_seconds * 1e9))
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(subject=exc.subject, description=exc.limit)
        ]
    )
    return build(
        mapped.code,
        mapped.reason,
        exc.message,
        details=[error_details_pb2.RetryInfo(retry_delay=delay), quota],
    )


def internal(request_id: str) -> grpc.Status:
    return build(
        grpc.StatusCode.INTERNAL,
        INTERNAL_REASON,
        f"internal error (ref {request_id})",
        metadata={"request_id": request_id},
    )
