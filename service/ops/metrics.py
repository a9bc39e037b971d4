"""Prometheus metrics of the service, served on CREDITS_METRICS_ADDR (`/metrics`).

With several processes (service.processes) each worker writes its metrics to files that
the supervisor serves summed; a gauge says how its processes' values combine."""

import contextlib
import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

# Every RPC, streams (reflection, health Watch) included, is counted once when it ends.
RPCS = Counter("credits_rpcs_total", "RPCs served, by method and status code", ["method", "code"])
RPC_SECONDS = Histogram(
    "credits_rpc_duration_seconds",
    "Time to serve an RPC (a stream: until it ends), by method",
    ["method"],
    # From sub-millisecond reads to the slowest acceptable write.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RATE_LIMITED = Counter(
    "credits_rate_limited_total",
    "Calls refused by a rate limit, by caller and method",
    ["caller", "method"],
)
AUTHENTICATION_FAILURES = Counter(
    "credits_authentication_failures_total", "Calls refused for missing or bad credentials"
)
# Handshakes refused for a missing, expired or foreign client certificate never reach
# Python, so they cannot be counted as failures: handshakes rising while RPCs do not
# points at clients being refused.
TLS_HANDSHAKES = Counter(
    "credits_tls_handshakes_total", "TLS handshakes begun (accepted or refused) by the server"
)
TLS_CERTIFICATE_EXPIRES = Gauge(
    "credits_tls_certificate_expires_timestamp_seconds",
    "When the server certificate in force stops being valid (Unix time)",
    multiprocess_mode="livemin",
)
CONFIG_RELOADS = Counter(
    "credits_config_reloads_total",
    "Reloads (SIGHUP) of the callers file or the TLS files, by file and result",
    ["file", "result"],
)
SWEPT_ACCOUNTS = Counter(
    "credits_sweeper_accounts_total", "Accounts the sweeper settled (expired holds and grants)"
)
SWEEP_FAILURES = Counter(
    "credits_sweeper_failures_total", "Accounts the sweeper failed to settle (passed over)"
)

# Every refusal of a call that reached the ledger or the interceptors, by its stable reason
# (service/ledger/failures.py): a bounded set, unlike anything a caller sends.
REFUSALS = Counter(
    "credits_refusals_total",
    "Calls refused with a known reason, by method and reason",
    ["method", "reason"],
)
# Reservations this instance settled, by job type (CREDITS_JOB_TYPES, others as "other")
# and outcome (confirmed, released). Expiries are settled by whichever read or sweep
# touches the account first, inside the ledger's functions, and are not counted here:
# GetUsageSummary counts them from the ledger.
RESERVATIONS_FINISHED = Counter(
    "credits_reservations_finished_total",
    "Reservations settled by Confirm or Release, by job type and outcome",
    ["job_type", "outcome"],
)
CREDITS_CAPTURED = Counter(
    "credits_captured_credits_total", "Credits captured by Confirm, by job type", ["job_type"]
)
OTHER_JOB_TYPE = "other"
RECONCILE_DISCREPANCIES = Gauge(
    "credits_reconcile_discrepancies",
    "Discrepancies the last completed scheduled reconcile found",
    multiprocess_mode="livemax",
)
RECONCILE_COMPLETED = Gauge(
    "credits_reconcile_last_completed_timestamp_seconds",
    "When a scheduled reconcile last completed (Unix time); the instance that ran it says",
    multiprocess_mode="livemax",
)
RECONCILE_INTERVAL = Gauge(
    "credits_reconcile_interval_seconds",
    "CREDITS_RECONCILE_INTERVAL_SECONDS of this instance (0: no scheduled reconcile)",
    multiprocess_mode="livemax",
)
RECONCILE_FAILURES = Counter(
    "credits_reconcile_failures_total", "Scheduled reconciles that could not complete"
)


def job_type_label(job_type: str, known: frozenset[str]) -> str:
    """A job type as a label value: callers choose job types, so only the configured
    ones are labels of their own, which bounds the number of series."""
    return job_type if job_type in known else OTHER_JOB_TYPE


WEBHOOK_ATTEMPTS = Counter(
    "credits_webhook_attempts_total",
    "Webhook deliveries attempted, by endpoint (its host) and result (delivered, failed)",
    ["endpoint", "result"],
)
WEBHOOK_GIVEN_UP = Counter(
    "credits_webhook_given_up_total",
    "Events given up on after CREDITS_WEBHOOK_RETRY_HOURS of failures, by endpoint",
    ["endpoint"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "credits_webhook_delivery_seconds",
    "Time from an event's commit to its endpoint's acknowledgement (retries and outages"
    " included), by endpoint",
    ["endpoint"],
    # From a live delivery (tens of milliseconds) to an endpoint down for hours.
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0),
)
WEBHOOK_CONSECUTIVE_FAILURES = Gauge(
    "credits_webhook_consecutive_failures",
    "Failed webhook attempts to the endpoint since its last delivery, by endpoint; 0 on an"
    " instance that does not deliver",
    ["endpoint"],
    multiprocess_mode="max",
)
WEBHOOK_LAG_SECONDS = Gauge(
    "credits_webhook_lag_seconds",
    "Age of the oldest undelivered event, by endpoint; 0 when none",
    ["endpoint"],
    multiprocess_mode="max",
)
# The events are written inside the ledger's SQL functions, so no process sees them all:
# a background task (service/store/sampling.py) reads how far the outbox's sequence has
# gone and adds the difference. Every instance reads the same database, so every
# instance reports every event: sum over processes of one instance, max over instances.
EVENTS_WRITTEN = Counter(
    "credits_events_written_total",
    "Events written to the outbox by every instance (the database's ledger_events"
    " sequence, sampled), since this process started sampling; a transaction rolled back"
    " after writing its event counts too",
)

HEALTH_SERVING = Gauge(
    "credits_health_serving",
    "1 while health answers SERVING, 0 while NOT_SERVING",
    multiprocess_mode="livemin",
)
DB_POOL_IN_USE = Gauge(
    "credits_db_pool_in_use", "Database connections held by calls", multiprocess_mode="livesum"
)
# Divides credits_db_pool_in_use into how full the pool is (the saturation alert).
DB_POOL_SIZE = Gauge(
    "credits_db_pool_size",
    "Database connections the pool may hold (CREDITS_DB_POOL_SIZE)",
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "credits_db_pool_waiting",
    "Calls waiting for a database connection (pool full or connecting)",
    multiprocess_mode="livesum",
)


def serve(address: str) -> None:
    """Serve /metrics on host:port in a background thread."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"))


def serve_processes(address: str, directory: str) -> None:
    """Serve on host:port, in a background thread, the metrics that the processes
    started with PROMETHEUS_MULTIPROC_DIR=`directory` write there, summed over them."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=registry)


# The workers' metrics files live in a folder of tempfile's (TMPDIR, else /tmp) named so;
# its supervisor holds a lock on the file LOCK_FILE_NAME in it for as long as it lives.
PROCESSES_DIRECTORY_PREFIX = "credits-metrics-"
# The name a folder has until its lock is held, which no sweep matches.
PROCESSES_DIRECTORY_STARTING_PREFIX = ".credits-metrics-starting-"
LOCK_FILE_NAME = ".supervisor.lock"


@contextlib.contextmanager
def processes_directory() -> Iterator[str]:
    """A folder for the metrics files of a supervisor's workers, removed when the block
    ends. A supervisor killed outright cannot remove its folder, so each call first
    removes the folders whose supervisor is gone (their lock is free)."""
    remove_abandoned_directories()
    starting = Path(tempfile.mkdtemp(prefix=PROCESSES_DIRECTORY_STARTING_PREFIX))
    directory = starting.with_name(
        PROCESSES_DIRECTORY_PREFIX + starting.name.removeprefix(PROCESSES_DIRECTORY_STARTING_PREFIX)
    )
    try:
        with (starting / LOCK_FILE_NAME).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            starting.rename(directory)
            yield str(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(starting, ignore_errors=True)


def remove_abandoned_directories() -> None:
    """Remove the metrics folders of supervisors that are gone. A folder without a lock
    file (another program's, or one of an older version that may be running) is left
    alone, and so is one this user may not open."""
    for directory in Path(tempfile.gettempdir()).glob(PROCESSES_DIRECTORY_PREFIX + "*"):
        try:
            with (directory / LOCK_FILE_NAME).open("r") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            # Held (BlockingIOError), no lock file, or not ours to open.
            continue
