"""Opaque page tokens for the list RPCs: where the previous page ended, bound to the
account and the list it came from, so that a token can neither be forged into a bad
query nor reach another account's rows (a foreign token is refused as invalid)."""

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence

from service.ledger import limits

# Enough of a hash to tell accounts apart in a token; the account is also a condition of
# every list query, so this is about telling the caller early, not about secrecy.
ACCOUNT_DIGEST_BYTES = 8
# Ledger entry ids are BIGINT.
ENTRY_ID_MAX = 2**63 - 1


class BadToken(ValueError):
    """Not a token this service made for this account and this list."""


def _account_digest(account_id: str) -> str:
    return hashlib.sha256(account_id.encode()).hexdigest()[: ACCOUNT_DIGEST_BYTES * 2]


def encode(kind: str, account_id: str, keys: Sequence[str]) -> str:
    raw = json.dumps([kind, _account_digest(account_id), *keys], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str, kind: str, account_id: str, key_count: int) -> list[str]:
    """The keys of a token made by `encode(kind, account_id, …)`; BadToken otherwise."""
    if len(token) > limits.PAGE_TOKEN_CHARS_MAX:
        raise BadToken("token too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fields = json.loads(raw.decode())
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadToken("malformed token") from exc
    if (
        not isinstance(fields, list)
        or len(fields) != 2 + key_count
        or not all(isinstance(f, str) for f in fields)
        or fields[0] != kind
        or not hmac.compare_digest(fields[1], _account_digest(account_id))
    ):
        raise BadToken("not a token of this list and account")
    return fields[2:]


def timestamp_key(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).isoformat()


def parse_timestamp_key(value: str) -> datetime.datetime:
    """An aware UTC time from a token; BadToken for anything else (naive, out of range)."""
    try:
        parsed = datetime.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise BadToken("naive time")
        return parsed.astimezone(datetime.UTC)
    except (ValueError, OverflowError) as exc:
        raise BadToken("bad time") from exc


def parse_entry_id_key(value: str) -> int:
    """A ledger entry id from a token; BadToken for anything else."""
    # The length check keeps int() off huge strings; the token's length is bounded too.
    if not value.isascii() or not value.isdigit() or len(value) > len(str(ENTRY_ID_MAX)):
        raise BadToken("bad id")
    parsed = int(value)
    if parsed > ENTRY_ID_MAX:
        raise BadToken("bad id")
    return parsed


def parse_uuid_key(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise BadToken("bad id") from exc
