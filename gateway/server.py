"""The HTTP server the gateway runs under: uvicorn, with every limit explicit."""

import uvicorn
from starlette.types import ASGIApp

from gateway.settings import Address

# Stripe needs no more than a few concurrent deliveries; this bounds memory and file
# descriptors under a flood (uvicorn answers 503 beyond it).
HTTP_CONNECTIONS_CONCURRENT_MAX = 256
HTTP_BACKLOG_CONNECTIONS = 256
HTTP_KEEP_ALIVE_SECONDS = 5
# Request line plus headers; a Stripe delivery's headers are well under 2 KiB.
HTTP_HEADER_BYTES_MAX = 16 * 1024
# In-flight deliveries get this long to finish on shutdown; each makes at most two
# calls of SERVICE_CALL_TIMEOUT_SECONDS.
SHUTDOWN_GRACE_SECONDS = 15


def uvicorn_config(app: ASGIApp, listen: Address) -> uvicorn.Config:
    """uvicorn with every limit explicit; tests serve the app with exactly this."""
    return uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        http="h11",
        lifespan="off",
        log_config=None,
        access_log=False,  # one line per delivery comes from the app, with its outcome
        server_header=False,
        proxy_headers=False,
        limit_concurrency=HTTP_CONNECTIONS_CONCURRENT_MAX,
        backlog=HTTP_BACKLOG_CONNECTIONS,
        timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        h11_max_incomplete_event_size=HTTP_HEADER_BYTES_MAX,
    )
