"""The one table from errors to gRPC statuses, and the rich status each carries.

Every failure leaves with a `google.rpc.Status` holding an ErrorInfo (domain
`credits.v1`, a stable reason). Messages are fixed strings: no amount, balance, SQL,
driver text, path or stack trace ever reaches a client.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.ledger import failures
from service.ledger.failures import (
    PermissionDenied,
    RateLimited,
    RateLimitUnavailable,
    Unauthenticated,
)

# The interceptors raise these through this module; they are defined, like every failure
# a caller can see, once in service/ledger/failures.py.
__all__ = [
    "STATUS_OF",
    "PermissionDenied",
    "RateLimitUnavailable",
    "RateLimited",
    "Unauthenticated",
    "build",
    "for_known",
    "internal",
]

DOMAIN = "credits.v1"


@dataclass(frozen=True)
class Mapped:
    code: grpc.StatusCode
    reason: str


STATUS_OF: Mapping[type[Exception], Mapped] = {
    failure: Mapped(grpc.StatusCode[failure.code], failure.reason) for failure in failures.ALL
}
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
    if mapped is None or not isinstance(exc, failures.Failure):
        return None
    if isinstance(exc, failures.InvalidRequest):
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
    return build(mapped.code, mapped.reason, exc.message, metadata=exc.metadata)


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
