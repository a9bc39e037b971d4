"""The development callers file: `backend`, `gateway`, `ops` and `events` with their
permissions, identified by their development certificates (`.dev/pki/<name>.pem`) and,
for the tls and insecure modes, by development API keys written next to the file
(`<dir>/api-keys/<name>.key`, only the SHA-256 goes into the callers file).
"""

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from service.access.callers import api_key_digest

DEV_RPCS: Mapping[str, tuple[str, ...]] = {
    "backend": (
        "Reserve",
        "Confirm",
        "Release",
        "GetBalance",
        "ListUsage",
        "GetReservation",
        "ExtendReservation",
        "GetAccount",
        "ListPrices",
    ),
    "gateway": ("Grant", "Revoke", "GetBalance", "ListPrices"),
    "ops": ("*",),
    # A consumer of the event stream (a dashboard, an alerting job): reads, changes nothing.
    "events": ("WatchEvents", "GetBalance", "GetAccount"),
}
# Far above what two cores can serve, so that benchmarks are never throttled by accident.
DEV_RATE_PER_RPC = "20000/second"
API_KEYS_DIR_NAME = "api-keys"
# 32 random bytes: 43 URL-safe characters, above the service's minimum key length.
API_KEY_BYTES = 32


def api_key_path(callers_file: Path, caller: str) -> Path:
    """Where ensure_dev_callers keeps `caller`'s development API key."""
    return callers_file.parent / API_KEYS_DIR_NAME / f"{caller}.key"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


def _table(name: str, rpcs: tuple[str, ...], key_digest: str) -> str:
    # JSON strings and arrays of strings are valid TOML.
    return (
        f"[callers.{name}]\n"
        f"certificate_names = {json.dumps([name])}\n"
        f"api_key_sha256 = {json.dumps([key_digest])}\n"
        f"rpcs = {json.dumps(list(rpcs))}\n\n"
        f"[callers.{name}.rate_limits]\n"
        f'"*" = {json.dumps(DEV_RATE_PER_RPC)}\n'
    )


def ensure_dev_callers(path: Path) -> None:
    """Write the development callers file and API keys once; existing ones are kept, so
    that running clients stay valid."""
    if path.exists():
        return
    tables = []
    for name, rpcs in DEV_RPCS.items():
        key = secrets.token_urlsafe(API_KEY_BYTES)
        _write_private(api_key_path(path, name), key + "\n")
        tables.append(_table(name, rpcs, api_key_digest(key).hex()))
    header = "# Development callers, written by scripts/devcallers.py.\n\n"
    # Written whole under another name first: a half-written file would fail the start.
    partial = path.with_name(path.name + ".partial")
    _write_private(partial, header + "\n".join(tables))
    partial.replace(path)
