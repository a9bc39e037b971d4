"""What `grpc.health.v1.Health` answers: SERVING while the database answers, NOT_SERVING
while it cannot be reached (so that a load balancer sends traffic elsewhere), and
NOT_SERVING for good once the server is stopping."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

from grpc_health.v1 import health, health_pb2

from credits.v1 import credits_pb2
from service import metrics

log = logging.getLogger("credits.health")

SERVICE_NAME = credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].full_name
# The overall server ("") and the credits service answer alike: both need the database.
HEALTH_NAMES = ("", SERVICE_NAME)
# A probe (`SELECT 1`) slower than this counts as a database that cannot be reached: the
# RPCs it stands for would be as slow.
PROBE_TIMEOUT_SECONDS = 2.0


async def set_serving(servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Every name's status; ignored by the servicer once it is shutting down."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in HEALTH_NAMES:
        await servicer.set(name, status)
    metrics.HEALTH_SERVING.set(1 if serving else 0)


async def _reachable(ping: Callable[[], Awaitable[None]]) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await ping()
    except Exception as exc:
        log.debug("database probe failed", extra={"error": type(exc).__name__})
        return False
    return True


async def watch_database(
    ping: Callable[[], Awaitable[None]],
    servicer: health.aio.HealthServicer,
    interval_seconds: float,
) -> NoReturn:
    """Probe the database every `interval_seconds` and say what it found, until cancelled."""
    serving = True
    while True:
        reachable = await _reachable(ping)
        if reachable != serving:
            serving = reachable
            if serving:
                log.info("database reachable again: serving")
            else:
                log.warning("database unreachable: not serving")
            await set_serving(servicer, serving)
        await asyncio.sleep(interval_seconds)
