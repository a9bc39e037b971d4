"""The rules of the credits ledger: what a request may ask, what its answer means, and
which errors a caller can see. Standard library only; the store carries the rules that
must hold atomically (burn-down order, allocation, expiry) as constraints and
server-side functions, and reports their outcomes as the errors defined here.
"""

import base64
import binascii
import datetime
import enum
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Protocol

from service import limits

ACCOUNT_ID_PATTERN = re.compile(rf"[A-Za-z0-9._:@-]{{1,{limits.ACCOUNT_ID_CHARS_MAX}}}")
PRINTABLE_ASCII_PATTERN = re.compile(r"[\x20-\x7e]+")


class ReservationStatus(enum.IntEnum):
    RESERVED = 1
    CONFIRMED = 2
    RELEASED = 3
    EXPIRED = 4


class GrantSource(enum.IntEnum):
    UNSPECIFIED = 0
    PURCHASE = 1
    SIGNUP_BONUS = 2
    PROMOTION = 3
    ADJUSTMENT = 4


GRANTABLE_SOURCES = frozenset(int(s) for s in GrantSource if s is not GrantSource.UNSPECIFIED)


# --- errors: each has a stable reason; service.errors maps classes to status codes ---


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class LedgerError(Exception):
    """An answer the caller is meant to see. Messages never name amounts or balances."""

    reason: ClassVar[str]
    message: ClassVar[str]

    def __init__(self) -> None:
        super().__init__(self.message)


class InvalidRequest(LedgerError):
    reason = "INVALID_REQUEST"
    message = "the request has invalid fields"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        super().__init__()
        self.violations = tuple(violations)


class InsufficientCredits(LedgerError):
    reason = "INSUFFICIENT_CREDITS"
    message = "the account does not have enough credits"


class ReservationNotFound(LedgerError):
    reason = "RESERVATION_NOT_FOUND"
    message = "reservation not found"


class ReservationNotActive(LedgerError):
    reason = "RESERVATION_NOT_ACTIVE"
    message = "the reservation is no longer active"


class CaptureExceedsReservation(LedgerError):
    reason = "CAPTURE_EXCEEDS_RESERVATION"
    message = "the amount to confirm exceeds the reserved amount"


class GrantNotFound(LedgerError):
    reason = "GRANT_NOT_FOUND"
    message = "grant not found"


class IdempotencyKeyReused(LedgerError):
    reason = "IDEMPOTENCY_KEY_REUSED"
    message = "the idempotency key was already used for a different request"


class SignupBonusExists(LedgerError):
    reason = "SIGNUP_BONUS_EXISTS"
    message = "the account already received its signup bonus"


class ExternalRefExists(LedgerError):
    reason = "EXTERNAL_REF_EXISTS"
    message = "a grant with this external reference already exists"


class StoreUnavailable(Exception):
    """The database cannot be reached; the request did not happen (or will be replayed)."""


class StoreTimeout(Exception):
    """The call ran out of time in the database (the client's deadline or the statement
    timeout) and was rolled back."""


# --- what the ledger deals in ---


@dataclass(frozen=True)
class Reservation:
    reservation_id: uuid.UUID
    account_id: str
    amount: int
    confirmed_amount: int
    status: ReservationStatus
    job_id: str
    job_type: str
    description: str
    created_at: datetime.datetime
    expires_at: datetime.datetime

    def as_seen_at(self, now: datetime.datetime) -> "Reservation":
        """Expiry is decided by expires_at, whether or not it has been settled yet."""
        if self.status is ReservationStatus.RESERVED and self.expires_at <= now:
            return Reservation(**{**asdict(self), "status": ReservationStatus.EXPIRED})
        return self


@dataclass(frozen=True)
class Grant:
    grant_id: uuid.UUID
    account_id: str
    original_amount: int
    remaining_amount: int
    source: GrantSource
    external_ref: str | None
    created_at: datetime.datetime
    expires_at: datetime.datetime | None
    revoked_amount: int
    priority: int


@dataclass(frozen=True)
class Revocation:
    grant: Grant
    revoked_amount: int
    unrecovered_amount: int


@dataclass(frozen=True)
class Balance:
    account_id: str
    available: int
    reserved: int
    expiring_amount: int
    next_expiry: datetime.datetime | None


@dataclass(frozen=True)
class UsageCursor:
    """Where a page of ListUsage ends: newest first, by creation time then id."""

    created_at: datetime.datetime
    reservation_id: uuid.UUID

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.reservation_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "UsageCursor":
        """Raises ValueError on anything that is not a token this service made."""
        if len(token) > limits.PAGE_TOKEN_CHARS_MAX:
            raise ValueError("token too long")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            created, _, rid = raw.partition("|")
            created_at = datetime.datetime.fromisoformat(created)
            if created_at.tzinfo is None:
                raise ValueError("naive time")
            return cls(created_at, uuid.UUID(rid))
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("malformed token") from exc


@dataclass(frozen=True)
class UsagePage:
    reservations: tuple[Reservation, ...]
    next_cursor: UsageCursor | None


# --- commands: one per RPC, already translated from the wire ---


@dataclass(frozen=True)
class ReserveCommand:
    caller: str
    account_id: str
    amount: int
    idempotency_key: str
    job_id: str = ""
    job_type: str = ""
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl: datetime.timedelta | None = None


@dataclass(frozen=True)
class ConfirmCommand:
    account_id: str
    reservation_id: str
    amount: int | None = None


@dataclass(frozen=True)
class ReleaseCommand:
    account_id: str
    reservation_id: str
    reason: str = ""


@dataclass(frozen=True)
class GrantCommand:
    caller: str
    account_id: str
    amount: int
    # The wire's number: an unknown one is a validation error, not a crash.
    source: int
    idempotency_key: str
    external_ref: str = ""
    expires_at: datetime.datetime | None = None
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0


@dataclass(frozen=True)
class RevokeCommand:
    caller: str
    account_id: str
    idempotency_key: str
    grant_id: str = ""
    external_ref: str = ""
    amount: int = 0
    reason: str = ""
    cumulative_series: str = ""


@dataclass(frozen=True)
class Policy:
    """The configured limits the rules depend on."""

    amount_max: int
    metadata_keys: frozenset[str]


class Store(Protocol):
    """What the ledger needs from storage. Each call is one transaction on one account."""

    async def reserve(
        self, cmd: ReserveCommand, ttl: datetime.timedelta, request_hash: bytes
    ) -> Reservation: ...

    async def confirm(
        self, account_id: str, reservation_id: uuid.UUID, amount: int | None
    ) -> Reservation: ...

    async def release(
        self, account_id: str, reservation_id: uuid.UUID, reason: str
    ) -> Reservation: ...

    async def grant(self, cmd: GrantCommand, request_hash: bytes) -> Grant: ...

    async def revoke(
        self, cmd: RevokeCommand, grant_id: uuid.UUID | None, request_hash: bytes
    ) -> Revocation: ...

    async def balance(self, account_id: str) -> Balance: ...

    async def usage(
        self, account_id: str, limit: int, after: UsageCursor | None
    ) -> tuple[list[Reservation], datetime.datetime]: ...


# --- validation ---


class _Check:
    """Collects every bad field of a request, so that one answer names them all."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, name: str, description: str) -> None:
        self.violations.append(FieldViolation(name, description))

    def account_id(self, value: str, name: str = "account_id") -> None:
        if not ACCOUNT_ID_PATTERN.fullmatch(value):
            self.fail(
                name, f"must be 1-{limits.ACCOUNT_ID_CHARS_MAX} characters of [A-Za-z0-9._:@-]"
            )

    def amount(self, value: int, amount_max: int, name: str = "amount") -> None:
        if not 0 < value <= amount_max:
            self.fail(name, f"must be greater than 0 and at most {amount_max}")

    def idempotency_key(self, value: str) -> None:
        self.printable("idempotency_key", value, limits.IDEMPOTENCY_KEY_CHARS_MAX, required=True)

    def printable(self, name: str, value: str, chars_max: int, required: bool = False) -> None:
        if not value:
            if required:
                self.fail(name, "is required")
            return
        if len(value) > chars_max or not PRINTABLE_ASCII_PATTERN.fullmatch(value):
            self.fail(name, f"must be 1-{chars_max} printable ASCII characters")

    def text(self, name: str, value: str, chars_max: int) -> None:
        if len(value) > chars_max:
            self.fail(name, f"must be at most {chars_max} characters")

    def metadata(self, value: Mapping[str, str], allowed: frozenset[str]) -> None:
        if len(value) > limits.METADATA_ENTRIES_MAX:
            self.fail("metadata", f"must have at most {limits.METADATA_ENTRIES_MAX} entries")
        for key in sorted(value):
            if key not in allowed:
                self.fail(f"metadata[{key[: limits.METADATA_KEY_CHARS_MAX]}]", "key is not allowed")
            elif len(value[key]) > limits.METADATA_VALUE_CHARS_MAX:
                self.fail(
                    f"metadata[{key}]",
                    f"value must be at most {limits.METADATA_VALUE_CHARS_MAX} characters",
                )

    def uuid(self, name: str, value: str) -> uuid.UUID | None:
        try:
            return uuid.UUID(value)
        except ValueError:
            self.fail(name, "must be a UUID")
            return None

    def done(self) -> None:
        if self.violations:
            raise InvalidRequest(self.violations)


def request_hash(operation: str, fields: Mapping[str, object]) -> bytes:
    """A fingerprint of a request, to tell a replay from a different request with the
    same idempotency key. Canonical JSON: sorted keys, no whitespace."""
    canonical = json.dumps(
        {"operation": operation, **fields}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).digest()


def clamp_page_size(page_size: int) -> int:
    if page_size == 0:
        return limits.PAGE_SIZE_DEFAULT
    return max(limits.PAGE_SIZE_MIN, min(limits.PAGE_SIZE_MAX, page_size))


class Ledger:
    """The domain entry points: one per RPC, each validates, then makes one store call."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock

    async def reserve(self, cmd: ReserveCommand) -> Reservation:
        check = _Check()
        check.account_id(cmd.account_id)
        check.amount(cmd.amount, self._policy.amount_max)
        check.idempotency_key(cmd.idempotency_key)
        check.text("job_id", cmd.job_id, limits.JOB_FIELD_CHARS_MAX)
        check.text("job_type", cmd.job_type, limits.JOB_FIELD_CHARS_MAX)
        check.text("description", cmd.description, limits.DESCRIPTION_CHARS_MAX)
        check.metadata(cmd.metadata, self._policy.metadata_keys)
        ttl = limits.RESERVATION_TTL_DEFAULT if cmd.ttl is None else cmd.ttl
        if not limits.RESERVATION_TTL_MIN <= ttl <= limits.RESERVATION_TTL_MAX:
            check.fail("ttl", "must be between 1 second and 24 hours")
        check.done()
        fields = {**asdict(cmd), "ttl": ttl.total_seconds(), "caller": None}
        return await self._store.reserve(cmd, ttl, request_hash("reserve", fields))

    async def confirm(self, cmd: ConfirmCommand) -> Reservation:
        check = _Check()
        check.account_id(cmd.account_id)
        reservation_id = check.uuid("reservation_id", cmd.reservation_id)
        if cmd.amount is not None:
            check.amount(cmd.amount, self._policy.amount_max)
        check.done()
        assert reservation_id is not None
        return await self._store.confirm(cmd.account_id, reservation_id, cmd.amount)

    async def release(self, cmd: ReleaseCommand) -> Reservation:
        check = _Check()
        check.account_id(cmd.account_id)
        reservation_id = check.uuid("reservation_id", cmd.reservation_id)
        check.text("reason", cmd.reason, limits.REASON_CHARS_MAX)
        check.done()
        assert reservation_id is not None
        return await self._store.release(cmd.account_id, reservation_id, cmd.reason)

    async def grant(self, cmd: GrantCommand) -> Grant:
        check = _Check()
        check.account_id(cmd.account_id)
        check.amount(cmd.amount, self._policy.amount_max)
        check.idempotency_key(cmd.idempotency_key)
        if cmd.source not in GRANTABLE_SOURCES:
            check.fail("source", "must be a known source other than UNSPECIFIED")
        check.printable("external_ref", cmd.external_ref, limits.EXTERNAL_REF_CHARS_MAX)
        if cmd.expires_at is not None and cmd.expires_at <= self._clock():
            check.fail("expires_at", "must be in the future")
        check.text("description", cmd.description, limits.DESCRIPTION_CHARS_MAX)
        check.metadata(cmd.metadata, self._policy.metadata_keys)
        if not limits.PRIORITY_INT32_MIN <= cmd.priority <= limits.PRIORITY_INT32_MAX:
            check.fail("priority", "must be a 32-bit integer")
        check.done()
        fields = {**asdict(cmd), "source": int(cmd.source), "caller": None}
        return await self._store.grant(cmd, request_hash("grant", fields))

    async def revoke(self, cmd: RevokeCommand) -> Revocation:
        check = _Check()
        if cmd.account_id or not cmd.external_ref:
            check.account_id(cmd.account_id)
        check.idempotency_key(cmd.idempotency_key)
        grant_id = None
        if cmd.grant_id:
            grant_id = check.uuid("grant_id", cmd.grant_id)
        elif cmd.external_ref:
            check.printable("external_ref", cmd.external_ref, limits.EXTERNAL_REF_CHARS_MAX)
        else:
            check.fail("target", "grant_id or external_ref is required")
        if cmd.cumulative_series:
            check.printable(
                "cumulative_series", cmd.cumulative_series, limits.CUMULATIVE_SERIES_CHARS_MAX
            )
            check.amount(cmd.amount, self._policy.amount_max)
        elif not 0 <= cmd.amount <= self._policy.amount_max:
            check.fail("amount", f"must be between 0 (all) and {self._policy.amount_max}")
        check.text("reason", cmd.reason, limits.REASON_CHARS_MAX)
        check.done()
        fields = {**asdict(cmd), "caller": None}
        return await self._store.revoke(cmd, grant_id, request_hash("revoke", fields))

    async def balance(self, account_id: str) -> Balance:
        check = _Check()
        check.account_id(account_id)
        check.done()
        return await self._store.balance(account_id)

    async def usage(self, account_id: str, page_size: int, page_token: str) -> UsagePage:
        check = _Check()
        check.account_id(account_id)
        after = None
        if page_token:
            try:
                after = UsageCursor.decode(page_token)
            except ValueError:
                check.fail("page_token", "is not a token from a previous page")
        check.done()
        limit = clamp_page_size(page_size)
        # One more than the page tells whether another page follows.
        rows, now = await self._store.usage(account_id, limit + 1, after)
        page = tuple(r.as_seen_at(now) for r in rows[:limit])
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = UsageCursor(last.created_at, last.reservation_id)
        return UsagePage(page, next_cursor)
