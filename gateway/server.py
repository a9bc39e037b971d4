"""The HTTP server the gateway runs under: uvicorn, with every limit explicit, and the
connection limits of `gateway.connections` in its h11 protocol."""

import uvicorn
from starlette.types import ASGIApp

from gateway.connections import ConnectionLimits, guarded_protocol
from gateway.settings import Address

# A Stripe delivery sends its head and its few KiB of body at once; a client that takes
# longer is not Stripe, or too slow to be answered before Stripe gives up anyway.
HTTP_HEAD_TIMEOUT_SECONDS = 10.0
HTTP_BODY_TIMEOUT_SECONDS = 10.0
# File descriptors: far below a default `ulimit -n` of 1024, with room for the rest.
HTTP_CONNECTIONS_MAX = 512
# Stripe needs a few concurrent deliveries; one peer (or the reverse proxy in front,
# which sends only whole requests) never needs more than this.
HTTP_PEER_CONNECTIONS_MAX = 64
# Connections still sending a request or idle: beyond it the oldest is closed, so idle
# sockets cannot keep a genuine delivery out (gateway.connections).
HTTP_UNFINISHED_CONNECTIONS_MAX = 64
HTTP_BACKLOG_CONNECTIONS = 256
HTTP_KEEP_ALIVE_SECONDS = 5
# Request line plus headers; a Stripe delivery's headers are well under 2 KiB.
HTTP_HEADER_BYTES_MAX = 16 * 1024
# In-flight deliveries get this long to finish on shutdown; each makes at most two
# calls of SERVICE_CALL_TIMEOUT_SECONDS.
SHUTDOWN_GRACE_SECONDS = 15

CONNECTION_LIMITS = ConnectionLimits(
    head_timeout_seconds=HTTP_HEAD_TIMEOUT_SECONDS,
    body_timeout_seconds=HTTP_BODY_TIMEOUT_SECONDS,
    connections_max=HTTP_CONNECTIONS_MAX,
    peer_connections_max=HTTP_PEER_CONNECTIONS_MAX,
    unfinished_connections_max=HTTP_UNFINISHED_CONNECTIONS_MAX,
)


def check_limits(limits: ConnectionLimits) -> None:
    """How the limits must relate; a violation is a bug in the constants, found at start."""
    if not 0 < limits.unfinished_connections_max <= limits.connections_max:
        raise ValueError("unfinished connections must be 1..connections_max")
    if not 0 < limits.peer_connections_max <= limits.connections_max:
        raise ValueError("connections per peer must be 1..connections_max")
    if limits.head_timeout_seconds <= 0 or limits.body_timeout_seconds <= 0:
        raise ValueError("the head and body timeouts must be positive")


def uvicorn_config(
    app: ASGIApp, listen: Address, limits: ConnectionLimits = CONNECTION_LIMITS
) -> uvicorn.Config:
    """uvicorn with every limit explicit; tests serve the app with exactly this."""
    check_limits(limits)
    return uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        http=guarded_protocol(limits),
        lifespan="off",
        log_config=None,
        access_log=False,  # one line per delivery comes from the app, with its outcome
        server_header=False,
        proxy_headers=False,
        # Off: uvicorn counts idle connections against it and answers genuine requests
        # 503 while they are open. The limits above bound connections instead.
        limit_concurrency=None,
        backlog=HTTP_BACKLOG_CONNECTIONS,
        timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        h11_max_incomplete_event_size=HTTP_HEADER_BYTES_MAX,
    )
