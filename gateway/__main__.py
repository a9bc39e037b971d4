"""`python -m gateway`: the composition root. Reads the settings, opens the channel to
the service, serves the webhook under uvicorn until SIGINT/SIGTERM, then lets in-flight
deliveries finish (Stripe retries anything cut short) and closes the channel."""

import asyncio
import logging
import os
import signal
import sys
import types

import uvicorn
from prometheus_client import start_http_server
from starlette.types import ASGIApp

from gateway import logs
from gateway.app import Gateway, create_app
from gateway.credits_client import CHANNEL_CLOSE_GRACE_SECONDS, CreditsClient, open_channel
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings, SettingsError, load_settings

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
EXIT_BAD_SETTINGS = 2

log = logging.getLogger("gateway")


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.listen.host,
        port=settings.listen.port,
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


def _ignore_signal(signum: int, frame: types.FrameType | None) -> None:
    """uvicorn handles SIGINT/SIGTERM while serving and re-raises them afterwards; by
    then shutdown is done, so the re-raised signal must not kill the process early."""


async def serve(settings: Settings) -> None:
    metrics = GatewayMetrics()
    if settings.metrics is not None:
        start_http_server(settings.metrics.port, settings.metrics.host, registry=metrics.registry)
    channel = open_channel(
        settings.service_target,
        settings.ca_pem,
        settings.cert_pem,
        settings.key_pem,
        settings.service_name_override,
    )
    gateway = Gateway(
        secrets=settings.webhook_secrets,
        packages=settings.packages,
        account_metadata_key=settings.account_metadata_key,
        credits=CreditsClient(channel, metrics),
        metrics=metrics,
    )
    server = uvicorn.Server(uvicorn_config(create_app(gateway), settings))
    log.info(
        "gateway starting",
        extra={
            "fields": {
                "environment": settings.environment,
                "listen": str(settings.listen),
                "service": settings.service_target,
                "metrics": str(settings.metrics) if settings.metrics else "",
                "packages": sorted(settings.packages.by_name),
                "webhook_secrets": len(settings.webhook_secrets),
            }
        },
    )
    try:
        await server.serve()
    finally:
        await channel.close(CHANNEL_CLOSE_GRACE_SECONDS)
        log.info("gateway stopped")


def main() -> int:
    logs.configure()
    try:
        settings = load_settings(os.environ)
    except SettingsError as error:
        log.error("gateway cannot start", extra={"fields": {"problems": error.problems}})
        return EXIT_BAD_SETTINGS
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore_signal)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
