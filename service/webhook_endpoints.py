"""The webhook endpoints: where events are POSTed, each with its own secret, its own
filter of event types, its own cursor and its own delivery worker.

`CREDITS_WEBHOOK_URL` with `CREDITS_WEBHOOK_SECRET_FILE` is one endpoint of every type.
More come from a TOML file (`CREDITS_WEBHOOK_ENDPOINTS_FILE`), one table each:

    [[endpoint]]
    name = "alerts"                     # the metrics' `endpoint` label; unique
    url = "https://alerts.example/credits"
    secret_file = "/etc/credits/alerts-webhook-secret"
    types = ["BALANCE_LOW", "BALANCE_DEPLETED", "BALANCE_RECOVERED"]   # omitted: all

Types are spelled as the webhook body's `type`. An endpoint filtered by type gets only
those events, each account's in order, and its cursor moves past the others.
"""

import hashlib
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.ledger.model import EventType

# Each endpoint has a worker of its own: a database connection and DELIVERY_LANES
# threads on the instance that holds its lock.
ENDPOINTS_MAX = 8
ENDPOINT_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
ENDPOINT_KEYS = frozenset({"name", "url", "secret_file", "types"})
TYPE_NAMES = frozenset(t.name for t in EventType if t is not EventType.UNSPECIFIED)
# The advisory lock of CREDITS_WEBHOOK_URL's worker, as before there were several: an
# instance of the previous release and one of this release never deliver it both.
URL_ENDPOINT_LOCK_KEY = 0x637265646974_7768


class EndpointsError(ValueError):
    """The endpoints file or its secret files are unusable; says which and why."""


@dataclass(frozen=True)
class WebhookEndpoint:
    # The metrics' label: the name given in the file, or the URL's host for
    # CREDITS_WEBHOOK_URL; never a path or query, which may hold a token.
    name: str
    # Never in a repr: the URL may hold a token.
    url: str = field(repr=False)
    secret_file: Path
    # None: every type.
    types: frozenset[EventType] | None
    # The session advisory lock whose holder, across all instances, delivers here.
    lock_key: int


def secret(path: Path, setting: str = "CREDITS_WEBHOOK_SECRET_FILE") -> bytes:
    """The secret that signs an endpoint's webhooks: the file's first line."""
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
    except OSError:
        raise EndpointsError(f"{setting} cannot be read") from None
    if not lines or not lines[0].strip():
        raise EndpointsError(f"{setting} is empty")
    return lines[0].strip().encode()


def check_url(url: str, setting: str) -> None:
    if not url.startswith(("https://", "http://")) or not urllib.parse.urlsplit(url).netloc:
        raise EndpointsError(f"{setting} must be an http(s):// URL")


def url_endpoint(url: str, secret_file: Path) -> WebhookEndpoint:
    """CREDITS_WEBHOOK_URL's endpoint: every type."""
    return WebhookEndpoint(
        urllib.parse.urlsplit(url).netloc, url, secret_file, None, URL_ENDPOINT_LOCK_KEY
    )


def load(path: Path, before: tuple[WebhookEndpoint, ...] = ()) -> tuple[WebhookEndpoint, ...]:
    """`before` and the endpoints of the file at `path`, each checked, its secret read."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise EndpointsError("CREDITS_WEBHOOK_ENDPOINTS_FILE cannot be read") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise EndpointsError(f"CREDITS_WEBHOOK_ENDPOINTS_FILE is not TOML: {error}") from None
    tables = document.get("endpoint")
    if set(document) != {"endpoint"} or not isinstance(tables, list) or not tables:
        raise EndpointsError(
            "CREDITS_WEBHOOK_ENDPOINTS_FILE must hold [[endpoint]] tables and nothing else"
        )
    endpoints = [*before, *(_endpoint(table, number) for number, table in enumerate(tables, 1))]
    if len(endpoints) > ENDPOINTS_MAX:
        raise EndpointsError(f"at most {ENDPOINTS_MAX} webhook endpoints")
    for attribute in ("name", "url", "lock_key"):
        values = [getattr(e, attribute) for e in endpoints]
        if len(set(values)) != len(values):
            raise EndpointsError(f"two webhook endpoints have the same {attribute}")
    return tuple(endpoints)


def _endpoint(table: Any, number: int) -> WebhookEndpoint:
    where = f"CREDITS_WEBHOOK_ENDPOINTS_FILE, endpoint {number}"
    if not isinstance(table, dict):
        raise EndpointsError(f"{where}: not a table")
    unknown = set(table) - ENDPOINT_KEYS
    if unknown:
        raise EndpointsError(f"{where}: unknown keys {sorted(unknown)}")
    name, url, secret_file = table.get("name"), table.get("url"), table.get("secret_file")
    if not isinstance(name, str) or not ENDPOINT_NAME_PATTERN.fullmatch(name):
        raise EndpointsError(f"{where}: name must match {ENDPOINT_NAME_PATTERN.pattern}")
    if not isinstance(url, str):
        raise EndpointsError(f"{where}: url is required")
    check_url(url, f"{where}: url")
    if not isinstance(secret_file, str) or not secret_file:
        raise EndpointsError(f"{where}: secret_file is required")
    secret(Path(secret_file), f"{where}: secret_file")
    return WebhookEndpoint(
        name, url, Path(secret_file), _types(table.get("types"), where), _lock_key(url)
    )


def _types(raw: Any, where: str) -> frozenset[EventType] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(t, str) and t in TYPE_NAMES for t in raw)
    ):
        raise EndpointsError(f"{where}: types must list event types, e.g. BALANCE_LOW")
    return frozenset(EventType[t] for t in raw)


def _lock_key(url: str) -> int:
    """A 64-bit advisory lock key of the endpoint's own (load checks that no two are the
    same: a worker holds its lock for good, so a shared one would starve the other)."""
    digest = hashlib.sha256(b"credits webhooks " + url.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
