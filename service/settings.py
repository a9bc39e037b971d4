"""Settings, read once from `CREDITS_…` environment variables into a frozen object.

`CREDITS_ENV=development` (what `make run` sets) fills what is missing from the `.dev/`
folder that `make run` generates; anything else is production, where every missing
setting stops the start with a message naming it. No secret has a default anywhere.
"""

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import limits as ratelimits
from limits import RateLimitItem

from service import webhook_endpoints
from service.access.callers import Callers, CallersError, load_for_mode
from service.access.tls import TlsError, TlsFiles
from service.access.tls import load as load_tls
from service.ledger import limits
from service.webhook_endpoints import WebhookEndpoint

DEVELOPMENT = "development"

# Development conventions shared with `make run` and the tools (docs/operations.md, "Settings").
DEV_DIR = Path(".dev")
DEV_GRPC_ADDR = "127.0.0.1:50051"
DEV_METRICS_ADDR = "127.0.0.1:9464"
DEV_CALLERS_FILE_NAME = "callers.toml"
# The development secret that signs webhooks, written by `make run` (scripts/devrun.py).
DEV_WEBHOOK_SECRET_FILE_NAME = "webhook-secret"  # noqa: S105 (a file name, not a secret)

# Generous enough for any single purchase; at most limits.AMOUNT_MAX_LIMIT.
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
# Each in-flight RPC holds at most one connection for one statement. Unless
# CREDITS_DB_POOL_SIZE says otherwise, the processes share this many connections: about
# what two database cores keep usefully busy, and well under PostgreSQL's default
# max_connections (100), which the gateway, tools and other clients share.
DB_CONNECTIONS_DEFAULT = 32
# One process per core: each is one event loop, and a Python process uses one core.
PROCESSES_MAX = 256
DB_POOL_TIMEOUT_SECONDS_DEFAULT = 5.0
# A statement that runs longer than this is stopped by PostgreSQL even when the client
# set no deadline, so that nothing runs on after the caller gave up.
DB_STATEMENT_TIMEOUT_SECONDS_DEFAULT = 10.0
# A connection attempt to a database that does not answer (a host that is down drops
# packets rather than refusing) fails after this, so calls fail fast with UNAVAILABLE.
DB_CONNECT_TIMEOUT_SECONDS_DEFAULT = 2.0
# How often health probes the database: a load balancer learns of an outage within
# about this (plus its own check interval).
HEALTH_CHECK_INTERVAL_SECONDS_DEFAULT = 2.0
MAX_CONCURRENT_RPCS_DEFAULT = 256
# WatchEvents streams per process, within its callers' calls: each stream holds one of
# those places and reads the outbox on every wake-up (up to a hundred a second per
# process under load), so a few dozen consumers per process, not hundreds.
EVENT_STREAMS_MAX_DEFAULT = 32
SHUTDOWN_GRACE_SECONDS_DEFAULT = 10.0
SWEEPER_INTERVAL_SECONDS_DEFAULT = 30.0
# Reconcile reads every row of the ledger: hourly finds a discrepancy within the hour at
# the cost of one full read an hour. 0 turns the schedule off.
RECONCILE_INTERVAL_SECONDS_DEFAULT = 3600.0
# Each job type adds a series per outcome: a dashboard's worth, not a catalogue.
JOB_TYPES_MAX = 50
# How long a webhook event is retried before it is given up on.
WEBHOOK_RETRY_HOURS_DEFAULT = 72.0
# How long the outbox keeps events for WatchEvents (docs/architecture.md, "Events").
EVENT_RETENTION_DAYS_DEFAULT = 30
# How long after its creation ExtendReservation may keep a reservation alive: a forgotten
# heartbeat must not hold credits for ever, and a week covers the longest render.
RESERVATION_LIFETIME_MAX_SECONDS_DEFAULT = 7 * 24 * 3600.0
# The same in development and production: every Reserve starts an expensive job, so one
# account starting more than 50 a second is a runaway loop rather than a customer's
# work, and since one account's transactions serialise on its row, more would only
# queue on the pool in front of other accounts.
RESERVE_RATE_PER_ACCOUNT_DEFAULT = "50/second"
# How often each instance measures its offset to PostgreSQL's clock (the ledger's time,
# docs/architecture.md "Time"): a clock slewed by NTP drifts at most 0.5 ms a second,
# 5 ms between two measurements.
CLOCK_SYNC_INTERVAL_SECONDS_DEFAULT = 10.0
# The most an instance's clock may be off PostgreSQL's after a measurement: half the
# round trip of `SELECT clock_timestamp()`; slower measurements are discarded. A
# database on the same network answers in well under 10 ms.
CLOCK_ERROR_MAX_SECONDS_DEFAULT = 0.05
# Tests only: honoured with CREDITS_ENV=development, refused otherwise.
TEST_CLOCK_SKEW_SETTING = "CREDITS_TEST_CLOCK_SKEW_SECONDS"
REDIS_URL_SCHEMES = ("redis://", "rediss://")
# CREDITS_ACCESS_LOG: one log line per RPC costs a formatted write on every call, so it is
# off unless asked for.
ACCESS_LOG_VALUES = {"on": True, "off": False}
ACCESS_LOG_DEFAULT = "off"
INSECURE_ALLOWED = "1"


class AuthMode(StrEnum):
    """How callers prove who they are (docs/operations.md, "Authentication modes")."""

    MTLS = "mtls"  # client certificates signed by the configured CA
    TLS = "tls"  # server-side TLS; each caller sends its secret as `x-api-key`
    # No TLS at all, callers still send `x-api-key`: development on loopback only.
    INSECURE = "insecure"


TLS_FILES_OF: Mapping[AuthMode, tuple[str, ...]] = {
    AuthMode.MTLS: ("CREDITS_TLS_CA_FILE", "CREDITS_TLS_CERT_FILE", "CREDITS_TLS_KEY_FILE"),
    AuthMode.TLS: ("CREDITS_TLS_CERT_FILE", "CREDITS_TLS_KEY_FILE"),
    AuthMode.INSECURE: (),
}


class SettingsError(Exception):
    """The configuration cannot start the service; the message names settings, never values."""


@dataclass(frozen=True)
class Settings:
    env: str
    # None means the embedded PostgreSQL under `dev_dir` (development only). Never in a
    # repr: the URL may hold a password.
    database_url: str | None = field(repr=False)
    dev_dir: Path
    grpc_addr: str
    metrics_addr: str | None
    # None where the authentication mode does not use the file.
    tls_ca_file: Path | None
    tls_cert_file: Path | None
    tls_key_file: Path | None
    callers_file: Path
    callers: Callers = field(repr=False)
    auth_mode: AuthMode = AuthMode.MTLS
    reserve_rate_per_account: tuple[RateLimitItem, ...] = field(
        default_factory=lambda: tuple(ratelimits.parse_many(RESERVE_RATE_PER_ACCOUNT_DEFAULT))
    )
    # None: rate limits are counted in this process only. May hold a password.
    redis_url: str | None = field(default=None, repr=False)
    amount_max: int = AMOUNT_MAX_DEFAULT
    metadata_keys: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_METADATA_KEYS))
    # Service processes sharing the gRPC port; each has its own pool of db_pool_size.
    # Above 1 only with redis_url: processes count rate limits in Redis together.
    processes: int = 1
    db_pool_size: int = DB_CONNECTIONS_DEFAULT
    db_pool_timeout_seconds: float = DB_POOL_TIMEOUT_SECONDS_DEFAULT
    db_statement_timeout_seconds: float = DB_STATEMENT_TIMEOUT_SECONDS_DEFAULT
    db_connect_timeout_seconds: float = DB_CONNECT_TIMEOUT_SECONDS_DEFAULT
    health_check_interval_seconds: float = HEALTH_CHECK_INTERVAL_SECONDS_DEFAULT
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS_DEFAULT
    event_streams_max: int = EVENT_STREAMS_MAX_DEFAULT
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS_DEFAULT
    sweeper_interval_seconds: float = SWEEPER_INTERVAL_SECONDS_DEFAULT
    # 0: no scheduled reconcile.
    reconcile_interval_seconds: float = RECONCILE_INTERVAL_SECONDS_DEFAULT
    # The job types counted under their own label in the metrics; others count as "other".
    job_types: frozenset[str] = frozenset()
    reservation_lifetime_max_seconds: float = RESERVATION_LIFETIME_MAX_SECONDS_DEFAULT
    # Where the service writes the pid to signal (service.ops.pidfile); None: nowhere.
    pid_file: Path | None = None
    # One JSON line per RPC (logger credits.access).
    access_log: bool = False
    clock_sync_interval_seconds: float = CLOCK_SYNC_INTERVAL_SECONDS_DEFAULT
    clock_error_max_seconds: float = CLOCK_ERROR_MAX_SECONDS_DEFAULT
    # How far this instance's own clock is moved (development only: tests of skew).
    test_clock_skew_seconds: float = 0.0
    event_retention_days: int = EVENT_RETENTION_DAYS_DEFAULT
    # The service-wide default thresholds of balance alerts, highest first; () none.
    balance_alert_thresholds: tuple[int, ...] = ()
    # Where events are POSTed, signed with the secret; None: no webhooks. Never in a
    # repr: the URL may hold a token.
    webhook_url: str | None = field(default=None, repr=False)
    webhook_secret_file: Path | None = None
    webhook_endpoints_file: Path | None = None
    webhook_retry_hours: float = WEBHOOK_RETRY_HOURS_DEFAULT
    # CREDITS_WEBHOOK_URL's endpoint, then the file's, each checked at load.
    webhook_endpoints: tuple[WebhookEndpoint, ...] = ()

    @property
    def development(self) -> bool:
        return self.env == DEVELOPMENT

    @property
    def tls_files(self) -> TlsFiles | None:
        """The TLS files of the mode: None when insecure; a CA file in mtls only."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer") from None


def _event_retention_days(env: Mapping[str, str]) -> int:
    days = _int(env, "CREDITS_EVENT_RETENTION_DAYS", EVENT_RETENTION_DAYS_DEFAULT)
    if days < 1:
        raise SettingsError("CREDITS_EVENT_RETENTION_DAYS must be at least 1")
    return days


def _balance_alert_thresholds(env: Mapping[str, str]) -> tuple[int, ...]:
    name = "CREDITS_BALANCE_ALERT_THRESHOLDS"
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    try:
        thresholds = [int(part) for part in raw.split(",")]
    except ValueError:
        raise SettingsError(f'{name} must be amounts like "1000,100"') from None
    problem = limits.balance_alert_thresholds_problem(thresholds)
    if problem:
        raise SettingsError(f"{name}: {problem}")
    return tuple(sorted(thresholds, reverse=True))


def _hours(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        hours = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of hours") from None
    if hours <= 0:
        raise SettingsError(f"{name} must be positive")
    return hours


def webhook_secret(path: Path) -> bytes:
    """The secret that signs an endpoint's webhooks: the file's first line."""
    try:
        return webhook_endpoints.secret(path)
    except webhook_endpoints.EndpointsError as error:
        raise SettingsError(str(error)) from None


def _webhook_url(env: Mapping[str, str]) -> str | None:
    url = env.get("CREDITS_WEBHOOK_URL") or None
    if url is not None:
        try:
            webhook_endpoints.check_url(url, "CREDITS_WEBHOOK_URL")
        except webhook_endpoints.EndpointsError as error:
            raise SettingsError(str(error)) from None
    return url


def _webhook_secret_file(env: Mapping[str, str], development: bool, dev_dir: Path) -> Path | None:
    raw = env.get("CREDITS_WEBHOOK_SECRET_FILE")
    if raw:
        return Path(raw)
    if not env.get("CREDITS_WEBHOOK_URL"):
        return None
    if development:
        return dev_dir / DEV_WEBHOOK_SECRET_FILE_NAME
    raise SettingsError("CREDITS_WEBHOOK_URL needs CREDITS_WEBHOOK_SECRET_FILE")


def _webhook_endpoints(settings: Settings) -> tuple[WebhookEndpoint, ...]:
    """Every endpoint, each with a usable secret at start, not at its first event."""
    endpoints: tuple[WebhookEndpoint, ...] = ()
    if settings.webhook_url and settings.webhook_secret_file:
        webhook_secret(settings.webhook_secret_file)
        endpoints = (
            webhook_endpoints.url_endpoint(settings.webhook_url, settings.webhook_secret_file),
        )
    if settings.webhook_endpoints_file is None:
        return endpoints
    try:
        return webhook_endpoints.load(settings.webhook_endpoints_file, endpoints)
    except webhook_endpoints.EndpointsError as error:
        raise SettingsError(str(error)) from None


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0))


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds") from None
    if seconds <= 0:
        raise SettingsError(f"{name} must be positive")
    return seconds


def _seconds_or_off(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, or 0 for off."""
    if env.get(name, "").strip() in ("0", "0.0"):
        return 0.0
    return _seconds(env, name, default)


def _job_types(env: Mapping[str, str]) -> frozenset[str]:
    raw = env.get("CREDITS_JOB_TYPES", "")
    return frozenset(t.strip() for t in raw.split(",") if t.strip())


def _rates(env: Mapping[str, str], name: str, default: str) -> tuple[RateLimitItem, ...]:
    try:
        items = tuple(ratelimits.parse_many(env.get(name) or default))
    except ValueError:
        items = ()
    if not items or any(item.amount < 1 for item in items):
        raise SettingsError(f'{name} must be limits like "50/second"')
    return items


def _auth_mode(env: Mapping[str, str], development: bool, grpc_addr: str | None) -> AuthMode:
    raw = env.get("CREDITS_AUTH_MODE") or AuthMode.MTLS
    try:
        mode = AuthMode(raw)
    except ValueError:
        raise SettingsError("CREDITS_AUTH_MODE must be mtls, tls or insecure") from None
    allowed = (
        development
        and env.get("CREDITS_ALLOW_INSECURE") == INSECURE_ALLOWED
        and grpc_addr is not None
        and is_loopback(grpc_addr)
    )
    if mode is AuthMode.INSECURE and not allowed:
        raise SettingsError(
            "CREDITS_AUTH_MODE=insecure needs CREDITS_ENV=development,"
            f" CREDITS_ALLOW_INSECURE={INSECURE_ALLOWED} and a loopback CREDITS_GRPC_ADDR"
        )
    return mode


def is_loopback(address: str) -> bool:
    """Whether `host:port` listens on this machine only."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require(get: Callable[[str], str | None], names: list[str], files: tuple[str, ...]) -> None:
    """Every one of `names` is set, and those of `files` name readable files."""
    missing = [name for name in names if get(name) is None]
    if missing:
        raise SettingsError("missing settings: " + ", ".join(missing))
    unreadable = [
        name
        for name in files
        if not (Path(str(get(name))).is_file() and os.access(str(get(name)), os.R_OK))
    ]
    if unreadable:
        raise SettingsError("settings naming no readable file: " + ", ".join(unreadable))


def _metadata_keys(env: Mapping[str, str]) -> frozenset[str]:
    raw = env.get("CREDITS_METADATA_KEYS")
    if raw is None:
        return frozenset(DEFAULT_METADATA_KEYS)
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


def _callers(path: Path, mode: AuthMode) -> Callers:
    try:
        return load_for_mode(path, certificates=mode is AuthMode.MTLS)
    except CallersError as exc:
        raise SettingsError(f"CREDITS_CALLERS_FILE: {exc}") from None


def _test_clock_skew(env: Mapping[str, str], development: bool) -> float:
    raw = env.get(TEST_CLOCK_SKEW_SETTING)
    if raw is None:
        return 0.0
    if not development:
        raise SettingsError(f"{TEST_CLOCK_SKEW_SETTING} is for tests: CREDITS_ENV=development only")
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{TEST_CLOCK_SKEW_SETTING} must be a number of seconds") from None


def _redis_url(env: Mapping[str, str]) -> str | None:
    url = env.get("CREDITS_REDIS_URL") or None
    if url is not None and not url.startswith(REDIS_URL_SCHEMES):
        raise SettingsError("CREDITS_REDIS_URL must start with redis:// or rediss://")
    return url


def _access_log(env: Mapping[str, str]) -> bool:
    raw = env.get("CREDITS_ACCESS_LOG") or ACCESS_LOG_DEFAULT
    if raw not in ACCESS_LOG_VALUES:
        raise SettingsError("CREDITS_ACCESS_LOG must be on or off")
    return ACCESS_LOG_VALUES[raw]


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
        "CREDITS_CALLERS_FILE": str(dev_dir / DEV_CALLERS_FILE_NAME),
    }

    def get(name: str) -> str | None:
        value = env.get(name) or None
        if value is None and development:
            return dev_defaults.get(name)
        return value

    auth_mode = _auth_mode(env, development, get("CREDITS_GRPC_ADDR"))
    tls_files = TLS_FILES_OF[auth_mode]
    required = ["CREDITS_GRPC_ADDR", *tls_files, "CREDITS_CALLERS_FILE"]
    if not development:
        required.append("CREDITS_DATABASE_URL")
    _require(get, required, files=(*tls_files, "CREDITS_CALLERS_FILE"))

    def tls_file(name: str) -> Path | None:
        return Path(str(get(name))) if name in tls_files else None

    callers_file = Path(str(get("CREDITS_CALLERS_FILE")))
    redis_url = _redis_url(env)
    # Without Redis one process is the only one that can count a limit exactly.
    processes = _int(env, "CREDITS_PROCESSES", cores() if redis_url is not None else 1)
    settings = Settings(
        env=DEVELOPMENT if development else "production",
        database_url=get("CREDITS_DATABASE_URL"),
        dev_dir=dev_dir,
        grpc_addr=str(get("CREDITS_GRPC_ADDR")),
        metrics_addr=get("CREDITS_METRICS_ADDR"),
        tls_ca_file=tls_file("CREDITS_TLS_CA_FILE"),
        tls_cert_file=tls_file("CREDITS_TLS_CERT_FILE"),
        tls_key_file=tls_file("CREDITS_TLS_KEY_FILE"),
        callers_file=callers_file,
        callers=_callers(callers_file, auth_mode),
        auth_mode=auth_mode,
        reserve_rate_per_account=_rates(
            env, "CREDITS_RESERVE_RATE_PER_ACCOUNT", RESERVE_RATE_PER_ACCOUNT_DEFAULT
        ),
        redis_url=redis_url,
        amount_max=_int(env, "CREDITS_AMOUNT_MAX", AMOUNT_MAX_DEFAULT),
        metadata_keys=_metadata_keys(env),
        processes=processes,
        db_pool_size=_int(
            env, "CREDITS_DB_POOL_SIZE", max(1, DB_CONNECTIONS_DEFAULT // max(1, processes))
        ),
        db_pool_timeout_seconds=_seconds(
            env, "CREDITS_DB_POOL_TIMEOUT_SECONDS", DB_POOL_TIMEOUT_SECONDS_DEFAULT
        ),
        db_statement_timeout_seconds=_seconds(
            env, "CREDITS_DB_STATEMENT_TIMEOUT_SECONDS", DB_STATEMENT_TIMEOUT_SECONDS_DEFAULT
        ),
        db_connect_timeout_seconds=_seconds(
            env, "CREDITS_DB_CONNECT_TIMEOUT_SECONDS", DB_CONNECT_TIMEOUT_SECONDS_DEFAULT
        ),
        health_check_interval_seconds=_seconds(
            env, "CREDITS_HEALTH_CHECK_INTERVAL_SECONDS", HEALTH_CHECK_INTERVAL_SECONDS_DEFAULT
        ),
        max_concurrent_rpcs=_int(env, "CREDITS_MAX_CONCURRENT_RPCS", MAX_CONCURRENT_RPCS_DEFAULT),
        event_streams_max=_int(env, "CREDITS_EVENT_STREAMS_MAX", EVENT_STREAMS_MAX_DEFAULT),
        shutdown_grace_seconds=_seconds(
            env, "CREDITS_SHUTDOWN_GRACE_SECONDS", SHUTDOWN_GRACE_SECONDS_DEFAULT
        ),
        sweeper_interval_seconds=_seconds(
            env, "CREDITS_SWEEPER_INTERVAL_SECONDS", SWEEPER_INTERVAL_SECONDS_DEFAULT
        ),
        reconcile_interval_seconds=_seconds_or_off(
            env, "CREDITS_RECONCILE_INTERVAL_SECONDS", RECONCILE_INTERVAL_SECONDS_DEFAULT
        ),
        job_types=_job_types(env),
        reservation_lifetime_max_seconds=_seconds(
            env,
            "CREDITS_RESERVATION_LIFETIME_MAX_SECONDS",
            RESERVATION_LIFETIME_MAX_SECONDS_DEFAULT,
        ),
        pid_file=Path(env["CREDITS_PID_FILE"]) if env.get("CREDITS_PID_FILE") else None,
        access_log=_access_log(env),
        clock_sync_interval_seconds=_seconds(
            env, "CREDITS_CLOCK_SYNC_INTERVAL_SECONDS", CLOCK_SYNC_INTERVAL_SECONDS_DEFAULT
        ),
        clock_error_max_seconds=_seconds(
            env, "CREDITS_CLOCK_ERROR_MAX_SECONDS", CLOCK_ERROR_MAX_SECONDS_DEFAULT
        ),
        test_clock_skew_seconds=_test_clock_skew(env, development),
        event_retention_days=_event_retention_days(env),
        balance_alert_thresholds=_balance_alert_thresholds(env),
        webhook_url=_webhook_url(env),
        webhook_secret_file=_webhook_secret_file(env, development, dev_dir),
        webhook_endpoints_file=(
            Path(env["CREDITS_WEBHOOK_ENDPOINTS_FILE"])
            if env.get("CREDITS_WEBHOOK_ENDPOINTS_FILE")
            else None
        ),
        webhook_retry_hours=_hours(env, "CREDITS_WEBHOOK_RETRY_HOURS", WEBHOOK_RETRY_HOURS_DEFAULT),
    )
    check(settings)
    _check_tls(settings)
    return dataclasses.replace(settings, webhook_endpoints=_webhook_endpoints(settings))


def _check_tls(settings: Settings) -> None:
    """The TLS files are usable: a certificate valid now, its key, a CA file that holds a
    certificate. Checked again by every reload."""
    if settings.tls_files is None:
        return
    try:
        load_tls(settings.tls_files, datetime.datetime.now(datetime.UTC))
    except TlsError as exc:
        raise SettingsError(str(exc)) from None


def check(settings: Settings) -> None:
    """How the limits relate, checked once at start-up."""
    # Bounded far below int64 so that no sum of amounts an account can hold overflows.
    if not 0 < settings.amount_max <= limits.AMOUNT_MAX_LIMIT:
        raise SettingsError(f"CREDITS_AMOUNT_MAX must be between 1 and {limits.AMOUNT_MAX_LIMIT}")
    if not 1 <= settings.processes <= PROCESSES_MAX:
        raise SettingsError(f"CREDITS_PROCESSES must be between 1 and {PROCESSES_MAX}")
    # Each process would count alone, and a client's one connection reaches one process:
    # no split of a limit between processes is the limit for that client.
    if settings.processes > 1 and settings.redis_url is None:
        raise SettingsError(
            "CREDITS_PROCESSES above 1 needs CREDITS_REDIS_URL, so that the processes count"
            " rate limits together; set CREDITS_REDIS_URL or CREDITS_PROCESSES=1"
        )
    if settings.db_pool_size < 1:
        raise SettingsError("CREDITS_DB_POOL_SIZE must be at least 1")
    # More RPCs in flight than pool connections only queue on the pool; far more means
    # callers time out waiting instead of being told RESOURCE_EXHAUSTED at once.
    if settings.max_concurrent_rpcs < settings.db_pool_size:
        raise SettingsError("CREDITS_MAX_CONCURRENT_RPCS must be at least CREDITS_DB_POOL_SIZE")
    if settings.event_streams_max < 1:
        raise SettingsError("CREDITS_EVENT_STREAMS_MAX must be at least 1")
    # Below the longest ttl, a Reserve could outlive the cap its extensions must respect.
    if settings.reservation_lifetime_max_seconds < limits.RESERVATION_TTL_MAX.total_seconds():
        raise SettingsError(
            "CREDITS_RESERVATION_LIFETIME_MAX_SECONDS must be at least the longest ttl"
            f" ({int(limits.RESERVATION_TTL_MAX.total_seconds())})"
        )
    # Each is a label value of every job outcome series.
    if len(settings.job_types) > JOB_TYPES_MAX:
        raise SettingsError(f"CREDITS_JOB_TYPES may name at most {JOB_TYPES_MAX} job types")
    for key in settings.metadata_keys:
        if len(key) > limits.METADATA_KEY_CHARS_MAX:
            raise SettingsError("CREDITS_METADATA_KEYS has a key that is too long")
