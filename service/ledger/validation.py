"""Field checks of requests: every bad field of a request is collected, so that one
INVALID_ARGUMENT answer names them all, and nothing reaches the database unchecked.
Standard library only."""

import datetime
import hashlib
import json
import re
import unicodedata
import uuid
from collections.abc import Mapping

from service.ledger import limits
from service.ledger.commands import WireTime
from service.ledger.failures import FieldViolation, InvalidRequest

ACCOUNT_ID_PATTERN = re.compile(limits.ACCOUNT_ID_REGEX)
PRINTABLE_ASCII_PATTERN = re.compile(r"[\x20-\x7e]+")
# PostgreSQL's text cannot hold NUL; refusing it here keeps it a bad field, not a crash.
NUL = "\x00"
# Unicode's control characters: C0, DEL and C1. An id holding them could drive the
# terminal of an operator who looks at it (ESC sequences, a newline that forges a line).
CONTROL_CATEGORY = "Cc"
NANOS_PER_SECOND = 1_000_000_000
# The range of google.protobuf.Timestamp, which is also inside what datetime holds.
TIMESTAMP_SECONDS_MIN = -62_135_596_800  # 0001-01-01T00:00:00Z
TIMESTAMP_SECONDS_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z


class Check:
    """Collects the violations of one request."""

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
        elif NUL in value:
            self.fail(name, "must not contain NUL characters")

    def identifier(self, name: str, value: str, chars_max: int) -> None:
        """Text that names something (a job, a kind of job): no control characters,
        which no name needs. Free text (descriptions, reasons) may hold newlines and
        tabs; whatever shows it must escape them."""
        if len(value) > chars_max:
            self.fail(name, f"must be at most {chars_max} characters")
        elif any(unicodedata.category(c) == CONTROL_CATEGORY for c in value):
            self.fail(name, "must not contain control characters")

    def metadata(self, value: Mapping[str, str], allowed: frozenset[str]) -> None:
        if len(value) > limits.METADATA_ENTRIES_MAX:
            self.fail("metadata", f"must have at most {limits.METADATA_ENTRIES_MAX} entries")
        for key in sorted(value):
            shown = f"metadata[{key[: limits.METADATA_KEY_CHARS_MAX].replace(NUL, '')}]"
            if key not in allowed:
                self.fail(shown, "key is not allowed")
            else:
                self.text(shown, value[key], limits.METADATA_VALUE_CHARS_MAX)

    def uuid(self, name: str, value: str) -> uuid.UUID | None:
        try:
            return uuid.UUID(value)
        except ValueError:
            self.fail(name, "must be a UUID")
            return None

    def ttl(self, value: WireTime | None) -> datetime.timedelta:
        """The reservation's time to live (the default when absent)."""
        if value is None:
            return limits.RESERVATION_TTL_DEFAULT
        if not duration_well_formed(value):
            self.fail("ttl", "must have nanos of the sign of seconds and below one second")
            return limits.RESERVATION_TTL_DEFAULT
        total_nanos = value.seconds * NANOS_PER_SECOND + value.nanos
        low = limits.RESERVATION_TTL_MIN // datetime.timedelta(microseconds=1) * 1000
        high = limits.RESERVATION_TTL_MAX // datetime.timedelta(microseconds=1) * 1000
        if not low <= total_nanos <= high:
            self.fail("ttl", "must be between 1 second and 24 hours")
            return limits.RESERVATION_TTL_DEFAULT
        return datetime.timedelta(microseconds=total_nanos // 1000)

    def timestamp(self, name: str, value: WireTime | None) -> datetime.datetime | None:
        if value is None:
            return None
        # protobuf's Timestamp rule: nanos count forward from the second, never back.
        if not 0 <= value.nanos < NANOS_PER_SECOND:
            self.fail(name, "must have nanos from 0 to 999999999")
            return None
        if not TIMESTAMP_SECONDS_MIN <= value.seconds <= TIMESTAMP_SECONDS_MAX:
            self.fail(name, "must be a time between the years 1 and 9999")
            return None
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return epoch + datetime.timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)

    def done(self) -> None:
        if self.violations:
            raise InvalidRequest(self.violations)


def duration_well_formed(value: WireTime) -> bool:
    """protobuf's Duration rules: |nanos| below a second, and nanos of the same sign as
    seconds (5 s and -999,999,999 ns is no duration, not 1 ns over 4 s)."""
    if abs(value.nanos) >= NANOS_PER_SECOND:
        return False
    # Zero or the same sign, never opposite signs.
    return value.seconds * value.nanos >= 0


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
