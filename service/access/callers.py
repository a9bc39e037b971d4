"""The callers file: who may call the service, how each caller is recognised, which RPCs
it may call and how fast. Default deny: an RPC a caller does not list is refused.

TOML, one table per caller (`CREDITS_CALLERS_FILE`):

    [callers.backend]
    certificate_names = ["backend"]          # mtls: the client certificate's SAN (else CN)
    api_key_sha256 = ["<64 hex digits>"]     # tls: SHA-256 of the x-api-key secret, <= 2
    rpcs = ["Reserve", "Confirm", "Release", "GetBalance", "ListUsage"]   # or ["*"]

    [callers.backend.rate_limits]            # `limits` strings, per caller and RPC
    "*" = "2000/second"                      # every allowed RPC without its own entry
    Reserve = "1000/second; 20000/minute"    # several limits: each one applies

Secrets are stored as plain SHA-256 digests on purpose: they are random values of at
least API_KEY_CHARS_MIN characters (`secrets.token_urlsafe(32)`), so there is no
dictionary to attack and neither salt nor a slow hash adds strength, while every RPC
pays for the verification. Presented keys shorter than that never match, so a weak
secret configured by mistake cannot authenticate anyone.
"""

import hashlib
import hmac
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import limits as ratelimits
from limits import RateLimitItem

from service.access import contract

ANY_RPC = "*"
RPC_NAMES = frozenset(contract.RPC_NAMES)
# Caller names scope idempotency keys and appear in logs and rate-limit keys.
CALLER_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
CERTIFICATE_NAME_CHARS_MAX = 253  # the longest DNS name a SAN can carry
# Two: the current secret and the next one, valid together during a rotation.
API_KEYS_PER_CALLER_MAX = 2
# Every API-key check compares against every stored digest, so the file stays small.
CALLERS_MAX = 256
CALLERS_FILE_BYTES_MAX = 1024 * 1024
# A secret of 32 random bytes in URL-safe base64 is 43 characters.
API_KEY_CHARS_MIN = 32
# Longer metadata is not a key of ours; refusing it early bounds the hashing work.
API_KEY_CHARS_MAX = 256
SHA256_HEX_PATTERN = re.compile(r"[0-9a-f]{64}")
CALLER_KEYS = frozenset({"certificate_names", "api_key_sha256", "rpcs", "rate_limits"})


class CallersError(ValueError):
    """The callers file cannot be used; the message names callers and fields, never secrets."""


@dataclass(frozen=True)
class Caller:
    name: str
    certificate_names: frozenset[str]
    api_key_sha256: tuple[bytes, ...]
    rpcs: frozenset[str]
    # RPC name (or ANY_RPC) → the limits that apply to each call of it.
    rate_limits: Mapping[str, tuple[RateLimitItem, ...]]

    def may_call(self, rpc: str) -> bool:
        return ANY_RPC in self.rpcs or rpc in self.rpcs

    def limits_for(self, rpc: str) -> tuple[RateLimitItem, ...]:
        return self.rate_limits.get(rpc) or self.rate_limits.get(ANY_RPC, ())


def api_key_digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode("utf-8")).digest()


@dataclass(frozen=True)
class Callers:
    by_name: Mapping[str, Caller]
    by_certificate_name: Mapping[str, Caller]

    def for_api_key(self, api_key: str) -> Caller | None:
        """The caller holding this secret. Every digest is compared, in constant time,
        so the answer's timing tells nothing about which caller or digest matched."""
        if not API_KEY_CHARS_MIN <= len(api_key) <= API_KEY_CHARS_MAX:
            return None
        presented = api_key_digest(api_key)
        found = None
        for caller in self.by_name.values():
            for digest in caller.api_key_sha256:
                if hmac.compare_digest(presented, digest):
                    found = caller
        return found


def _strings(name: str, field: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CallersError(f"caller {name!r}: {field} must be a list of non-empty strings")
    return value


def _rpcs(name: str, value: object) -> frozenset[str]:
    rpcs = frozenset(_strings(name, "rpcs", value))
    unknown = sorted(rpcs - RPC_NAMES - {ANY_RPC})
    if unknown:
        raise CallersError(f"caller {name!r}: rpcs names unknown RPCs: {', '.join(unknown)}")
    return rpcs


def _api_keys(name: str, value: object) -> tuple[bytes, ...]:
    digests = _strings(name, "api_key_sha256", value)
    if len(digests) > API_KEYS_PER_CALLER_MAX:
        raise CallersError(
            f"caller {name!r}: api_key_sha256 holds at most {API_KEYS_PER_CALLER_MAX} digests"
        )
    if not all(SHA256_HEX_PATTERN.fullmatch(d) for d in digests):
        raise CallersError(f"caller {name!r}: api_key_sha256 must hold 64 lowercase hex digits")
    return tuple(bytes.fromhex(d) for d in digests)


def _rate_limits(
    name: str, value: object, rpcs: frozenset[str]
) -> dict[str, tuple[RateLimitItem, ...]]:
    if not isinstance(value, dict):
        raise CallersError(f"caller {name!r}: rate_limits must be a table")
    parsed: dict[str, tuple[RateLimitItem, ...]] = {}
    for rpc, spec in value.items():
        if rpc not in RPC_NAMES and rpc != ANY_RPC:
            raise CallersError(f"caller {name!r}: rate_limits names an unknown RPC {rpc!r}")
        try:
            items = tuple(ratelimits.parse_many(spec)) if isinstance(spec, str) else ()
        except ValueError:
            items = ()
        if not items or any(item.amount < 1 for item in items):
            raise CallersError(
                f'caller {name!r}: rate_limits.{rpc} must be limits like "1000/second"'
            )
        parsed[rpc] = items
    # Every allowed RPC is limited: a forgotten entry must not mean "unlimited".
    needed = RPC_NAMES if ANY_RPC in rpcs else rpcs
    unlimited = sorted(rpc for rpc in needed if rpc not in parsed and ANY_RPC not in parsed)
    if unlimited:
        raise CallersError(
            f'caller {name!r}: rate_limits has no entry (or "*") for {", ".join(unlimited)}'
        )
    return parsed


def _caller(name: str, table: object) -> Caller:
    if not CALLER_NAME_PATTERN.fullmatch(name):
        raise CallersError("caller names are 1-64 characters of A-Z a-z 0-9 . _ -")
    if not isinstance(table, dict):
        raise CallersError(f"caller {name!r} must be a table")
    unknown = sorted(set(table) - CALLER_KEYS)
    if unknown:
        raise CallersError(f"caller {name!r}: unknown fields: {', '.join(unknown)}")
    certificate_names = frozenset(
        _strings(name, "certificate_names", table.get("certificate_names", []))
    )
    if any(len(c) > CERTIFICATE_NAME_CHARS_MAX for c in certificate_names):
        raise CallersError(f"caller {name!r}: a certificate name is too long")
    rpcs = _rpcs(name, table.get("rpcs", []))
    return Caller(
        name=name,
        certificate_names=certificate_names,
        api_key_sha256=_api_keys(name, table.get("api_key_sha256", [])),
        rpcs=rpcs,
        rate_limits=_rate_limits(name, table.get("rate_limits", {}), rpcs),
    )


def _unique(callers: Iterable[Caller]) -> dict[str, Caller]:
    """Certificate name → caller; a name or a secret belonging to two callers is refused,
    because either would make one caller's credentials authenticate another."""
    by_certificate_name: dict[str, Caller] = {}
    digests: set[bytes] = set()
    for caller in callers:
        for certificate_name in caller.certificate_names:
            if certificate_name in by_certificate_name:
                raise CallersError(f"caller {caller.name!r}: a certificate name is used twice")
            by_certificate_name[certificate_name] = caller
        for digest in caller.api_key_sha256:
            if digest in digests:
                raise CallersError(f"caller {caller.name!r}: an api_key_sha256 is used twice")
            digests.add(digest)
    return by_certificate_name


def parse(document: Mapping[str, Any]) -> Callers:
    unknown = sorted(set(document) - {"callers"})
    if unknown:
        raise CallersError(f"unknown top-level keys: {', '.join(unknown)}")
    tables = document.get("callers")
    if not isinstance(tables, dict) or not tables:
        raise CallersError("no [callers.<name>] tables")
    if len(tables) > CALLERS_MAX:
        raise CallersError(f"more than {CALLERS_MAX} callers")
    by_name = {name: _caller(name, table) for name, table in tables.items()}
    return Callers(by_name=by_name, by_certificate_name=_unique(by_name.values()))


def load_callers(path: Path) -> Callers:
    """Read and check the callers file; CallersError says what is wrong, never a secret."""
    try:
        with path.open("rb") as file:
            raw = file.read(CALLERS_FILE_BYTES_MAX + 1)
    except OSError:
        raise CallersError("cannot be read") from None
    if len(raw) > CALLERS_FILE_BYTES_MAX:
        raise CallersError(f"is larger than {CALLERS_FILE_BYTES_MAX} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        # The parser's message quotes the offending line, which may hold a secret.
        raise CallersError("is not valid UTF-8 TOML") from None
    return parse(document)


def missing_credentials(callers: Callers, *, certificates: bool) -> list[str]:
    """Callers that cannot authenticate in the configured mode: with certificates (mtls)
    each needs a certificate name, otherwise (tls) each needs a secret."""
    if certificates:
        return [c.name for c in callers.by_name.values() if not c.certificate_names]
    return [c.name for c in callers.by_name.values() if not c.api_key_sha256]


def load_for_mode(path: Path, *, certificates: bool) -> Callers:
    """The callers file, refused unless every caller can authenticate in the mode."""
    loaded = load_callers(path)
    lacking = missing_credentials(loaded, certificates=certificates)
    if lacking:
        needed = "certificate_names" if certificates else "api_key_sha256"
        raise CallersError(
            f"the authentication mode needs {needed} for every caller;"
            f" missing for {', '.join(lacking)}"
        )
    return loaded


class LiveCallers:
    """The callers in force, replaced whole by a reload (SIGHUP). Each RPC reads them once,
    in authentication, and carries the Caller it found to the later interceptors, so a
    reload in the middle of a call never mixes two versions of the file."""

    def __init__(self, callers: Callers) -> None:
        self._current = callers

    @property
    def current(self) -> Callers:
        return self._current

    def replace(self, callers: Callers) -> None:
        self._current = callers
