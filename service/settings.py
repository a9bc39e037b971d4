"""Settings, read once from `CREDITS_…` environment variables into a frozen object.

`CREDITS_ENV=development` (what `make run` sets) fills what is missing from the `.dev/`
folder that `make run` generates; anything else is production, where every missing
setting stops the start with a message naming it. No secret has a default anywhere.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service import limits

DEVELOPMENT = "development"

# Development conventions shared with `make run` and the tools (SPEC §6).
DEV_DIR = Path(".dev")
DEV_GRPC_ADDR = "127.0.0.1:50051"
DEV_METRICS_ADDR = "127.0.0.1:9464"

# Generous enough for any single purchase, small enough that sums of many amounts stay
# far from int64 overflow.
AMOUNT_MAX_DEFAULT = 1_000_000_000_000
DEFAULT_METADATA_KEYS = (
    "credit_package",
    "stripe_event",
    "stripe_session",
    "stripe_dispute",
    "trace_id",
    "request_origin",
    "model",
    "pages",
)
# Each in-flight RPC holds at most one connection for one statement; the pool is sized
# for the concurrency two cores can usefully drive.
DB_POOL_SIZE_DEFAULT = 16
DB_POOL_TIMEOUT_SECONDS_DEFAULT = 5.0
# A statement that runs longer than this is stopped by PostgreSQL even when the client
# set no deadline, so that nothing runs on after the caller gave up.
DB_STATEMENT_TIMEOUT_SECONDS_DEFAULT = 10.0
MAX_CONCURRENT_RPCS_DEFAULT = 256
SHUTDOWN_GRACE_SECONDS_DEFAULT = 10.0
SWEEPER_INTERVAL_SECONDS_DEFAULT = 30.0


class SettingsError(Exception):
    """The configuration cannot start the service; the message names settings, never values."""


@dataclass(frozen=True)
class Settings:
    env: str
    # None means the embedded PostgreSQL under `dev_dir` (development only).
    database_url: str | None
    dev_dir: Path
    grpc_addr: str
    metrics_addr: str | None
    tls_ca_file: Path
    tls_cert_file: Path
    tls_key_file: Path
    amount_max: int = AMOUNT_MAX_DEFAULT
    metadata_keys: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_METADATA_KEYS))
    db_pool_size: int = DB_POOL_SIZE_DEFAULT
    db_pool_timeout_seconds: float = DB_POOL_TIMEOUT_SECONDS_DEFAULT
    db_statement_timeout_seconds: float = DB_STATEMENT_TIMEOUT_SECONDS_DEFAULT
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS_DEFAULT
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS_DEFAULT
    sweeper_interval_seconds: float = SWEEPER_INTERVAL_SECONDS_DEFAULT

    @property
    def development(self) -> bool:
        return self.env == DEVELOPMENT


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer") from None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive")
    return value


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings, raising SettingsError naming every missing or bad one."""
    env = os.environ if env is None else env
    mode = env.get("CREDITS_ENV", "production")
    development = mode == DEVELOPMENT
    dev_dir = Path(env.get("CREDITS_DEV_DIR", str(DEV_DIR)))
    pki = dev_dir / "pki"
    dev_defaults = {
        "CREDITS_GRPC_ADDR": DEV_GRPC_ADDR,
        "CREDITS_METRICS_ADDR": DEV_METRICS_ADDR,
        "CREDITS_TLS_CA_FILE": str(pki / "ca.pem"),
        "CREDITS_TLS_CERT_FILE": str(pki / "server.pem"),
        "CREDITS_TLS_KEY_FILE": str(pki / "server.key"),
    }

    def get(name: str) -> str | None:
        value = env.get(name) or None
        if value is None and development:
            return dev_defaults.get(name)
        return value

    required = [
        "CREDITS_GRPC_ADDR",
        "CREDITS_TLS_CA_FILE",
        "CREDITS_TLS_CERT_FILE",
        "CREDITS_TLS_KEY_FILE",
    ]
    if not development:
        required.append("CREDITS_DATABASE_URL")
    missing = [name for name in required if get(name) is None]
    if missing:
        raise SettingsError("missing settings: " + ", ".join(missing))

    keys_raw = env.get("CREDITS_METADATA_KEYS")
    metadata_keys = (
        frozenset(DEFAULT_METADATA_KEYS)
        if keys_raw is None
        else frozenset(k.strip() for k in keys_raw.split(",") if k.strip())
    )
    settings = Settings(
        env=DEVELOPMENT if development else "production",
        database_url=get("CREDITS_DATABASE_URL"),
        dev_dir=dev_dir,
        grpc_addr=str(get("CREDITS_GRPC_ADDR")),
        metrics_addr=get("CREDITS_METRICS_ADDR"),
        tls_ca_file=Path(str(get("CREDITS_TLS_CA_FILE"))),
        tls_cert_file=Path(str(get("CREDITS_TLS_CERT_FILE"))),
        tls_key_file=Path(str(get("CREDITS_TLS_KEY_FILE"))),
        amount_max=_int(env, "CREDITS_AMOUNT_MAX", AMOUNT_MAX_DEFAULT),
        metadata_keys=metadata_keys,
        db_pool_size=_int(env, "CREDITS_DB_POOL_SIZE", DB_POOL_SIZE_DEFAULT),
        db_pool_timeout_seconds=_seconds(
            env, "CREDITS_DB_POOL_TIMEOUT_SECONDS", DB_POOL_TIMEOUT_SECONDS_DEFAULT
        ),
        db_statement_timeout_seconds=_seconds(
            env, "CREDITS_DB_STATEMENT_TIMEOUT_SECONDS", DB_STATEMENT_TIMEOUT_SECONDS_DEFAULT
        ),
        max_concurrent_rpcs=_int(env, "CREDITS_MAX_CONCURRENT_RPCS", MAX_CONCURRENT_RPCS_DEFAULT),
        shutdown_grace_seconds=_seconds(
            env, "CREDITS_SHUTDOWN_GRACE_SECONDS", SHUTDOWN_GRACE_SECONDS_DEFAULT
        ),
        sweeper_interval_seconds=_seconds(
            env, "CREDITS_SWEEPER_INTERVAL_SECONDS", SWEEPER_INTERVAL_SECONDS_DEFAULT
        ),
    )
    check(settings)
    return settings


def check(settings: Settings) -> None:
    """How the limits relate, checked once at start-up."""
    if not 0 < settings.amount_max <= limits.AMOUNT_INT64_MAX:
        raise SettingsError("CREDITS_AMOUNT_MAX must be between 1 and 2**63-1")
    if settings.db_pool_size < 1:
        raise SettingsError("CREDITS_DB_POOL_SIZE must be at least 1")
    # More RPCs in flight than pool connections only queue on the pool; far more means
    # callers time out waiting instead of being told RESOURCE_EXHAUSTED at once.
    if settings.max_concurrent_rpcs < settings.db_pool_size:
        raise SettingsError("CREDITS_MAX_CONCURRENT_RPCS must be at least CREDITS_DB_POOL_SIZE")
    for key in settings.metadata_keys:
        if len(key) > limits.METADATA_KEY_CHARS_MAX:
            raise SettingsError("CREDITS_METADATA_KEYS has a key that is too long")
