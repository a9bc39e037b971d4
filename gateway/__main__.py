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

import jsonlog
from gateway.app import Gateway, create_app
from gateway.metrics import GatewayMetrics
from gateway.server import uvicorn_config
from gateway.service_calls import CHANNEL_CLOSE_GRACE_SECONDS, ServiceCalls, open_channel
from gateway.settings import Settings, SettingsError, load_settings
from gateway.stripe_api import StripeCharges

EXIT_CANNOT_SERVE = 1
EXIT_BAD_SETTINGS = 2

log = logging.getLogger("gateway")


def _ignore_signal(signum: int, frame: types.FrameType | None) -> None:
    """uvicorn handles SIGINT/SIGTERM while serving and re-raises them afterwards; by
    then shutdown is done, so the re-raised signal must not kill the process early."""


async def serve(settings: Settings) -> int:
    metrics = GatewayMetrics()
    if settings.metrics is not None:
        try:
            start_http_server(
                settings.metrics.port, settings.metrics.host, registry=metrics.registry
            )
        except OSError as error:
            fields = {"setting": "CREDITS_GATEWAY_METRICS_ADDR", "errno": error.errno}
            log.error("metrics address unavailable", extra=fields)
            return EXIT_CANNOT_SERVE
    channel = open_channel(
        settings.service_target,
        settings.ca_pem,
        settings.cert_pem,
        settings.key_pem,
        settings.service_name_override,
    )
    charges = (
        StripeCharges(settings.stripe_api_key, settings.stripe_api_base)
        if settings.stripe_api_key
        else None
    )
    gateway = Gateway(
        secrets=settings.webhook_secrets,
        packages=settings.packages,
        account_metadata_key=settings.account_metadata_key,
        credits=ServiceCalls(channel, metrics),
        metrics=metrics,
        charges=charges,
    )
    server = uvicorn.Server(uvicorn_config(create_app(gateway), settings.listen))
    log.info(
        "gateway starting",
        extra={
            "environment": settings.environment,
            "listen": str(settings.listen),
            "service": settings.service_target,
            "metrics": str(settings.metrics) if settings.metrics else "",
            "packages": sorted(settings.packages.by_name),
            "webhook_secrets": len(settings.webhook_secrets),
            # Whether a refund that fails can give its credits back; never the key.
            "stripe_api": settings.stripe_api_base if charges else "",
        },
    )
    try:
        await server.serve()
    finally:
        await channel.close(CHANNEL_CLOSE_GRACE_SECONDS)
        if charges is not None:
            await charges.close()
        log.info("gateway stopped")
    return 0


def main() -> int:
    jsonlog.configure()
    try:
        settings = load_settings(os.environ)
    except SettingsError as error:
        log.error("gateway cannot start", extra={"problems": error.problems})
        return EXIT_BAD_SETTINGS
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore_signal)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
