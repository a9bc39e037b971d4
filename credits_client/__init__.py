"""A typed Python client of the credits service (contract: protos/credits/v1).

`CreditsClient` for asyncio code, `SyncCreditsClient` for synchronous code; the README's
"Calling the service from Python" shows both.
"""

from credits_client.channel import secure_channel
from credits_client.client import CreditsClient, new_idempotency_key
from credits_client.errors import (
    AccountCreditsLimit,
    CaptureExceedsReservation,
    CreditsError,
    DatabaseUnavailable,
    DeadlineExceeded,
    ExternalRefExists,
    FieldViolation,
    GrantNotFound,
    IdempotencyKeyReused,
    InsufficientCredits,
    InternalError,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    RateLimitUnavailable,
    ReservationNotActive,
    ReservationNotFound,
    ResourceExhausted,
    SignupBonusExists,
    Unauthenticated,
    Unavailable,
)
from credits_client.hold import Hold
from credits_client.results import (
    Balance,
    Grant,
    Granted,
    GrantSource,
    Reservation,
    ReservationStatus,
    Reserved,
    Revocation,
)
from credits_client.retry import NO_RETRY, RetryPolicy
from credits_client.sync import SyncCreditsClient

__all__ = [
    "NO_RETRY",
    "AccountCreditsLimit",
    "Balance",
    "CaptureExceedsReservation",
    "CreditsClient",
    "CreditsError",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "ExternalRefExists",
    "FieldViolation",
    "Grant",
    "GrantNotFound",
    "GrantSource",
    "Granted",
    "Hold",
    "IdempotencyKeyReused",
    "InsufficientCredits",
    "InternalError",
    "InvalidRequest",
    "PermissionDenied",
    "RateLimitUnavailable",
    "RateLimited",
    "Reservation",
    "ReservationNotActive",
    "ReservationNotFound",
    "ReservationStatus",
    "Reserved",
    "ResourceExhausted",
    "RetryPolicy",
    "Revocation",
    "SignupBonusExists",
    "SyncCreditsClient",
    "Unauthenticated",
    "Unavailable",
    "new_idempotency_key",
    "secure_channel",
]
