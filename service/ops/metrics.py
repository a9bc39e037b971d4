"""Prometheus metrics of the service, served on CREDITS_METRICS_ADDR (`/metrics`).

With several processes (service.processes) each worker writes its metrics to files that
the supervisor serves summed; a gauge says how its processes' values combine."""

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

RPCS = Counter("credits_rpcs_total", "RPCs served, by method and status code", ["method", "code"])
RPC_SECONDS = Histogram(
    "credits_rpc_duration_seconds",
    "Time to serve an RPC, by method",
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

HEALTH_SERVING = Gauge(
    "credits_health_serving",
    "1 while health answers SERVING, 0 while NOT_SERVING",
    multiprocess_mode="livemin",
)
DB_POOL_IN_USE = Gauge(
    "credits_db_pool_in_use", "Database connections held by calls", multiprocess_mode="livesum"
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
