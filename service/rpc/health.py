"""What `grpc.health.v1.Health` answers: SERVING while the database answers, NOT_SERVING
while it cannot be reached (so that a load balancer sends traffic elsewhere), and
NOT_SERVING for good once the server is stopping.

Health is open to anyone, since probes carry no caller's credentials. A `Watch` stream,
though, stays open as long as its peer likes; the streams of peers that are no caller
therefore have a small budget of their own (service.rpc.admission counts it), so that no
number of them can take a caller's place; beyond it they are refused with
RESOURCE_EXHAUSTED. A caller's streams (gRPC's client-side health checking) count like
its other RPCs.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2

from service.access import authentication as auth
from service.access import contract
from service.access.callers import Caller, LiveCallers
from service.ops import metrics

log = logging.getLogger("credits.health")

# The overall server ("") and the credits service answer alike: both need the database.
HEALTH_NAMES = ("", contract.SERVICE_NAME)
# A probe (`SELECT 1`) slower than this counts as a database that cannot be reached: the
# RPCs it stands for would be as slow.
PROBE_TIMEOUT_SECONDS = 2.0
# Enough for the load balancers and probes of one instance.
ANONYMOUS_WATCHES_MAX = 16
# A refused watcher should come back later, not at once.
ANONYMOUS_WATCH_RETRY_SECONDS = 30.0
ANONYMOUS_WATCH_SUBJECT = "health Watch streams of peers that are no caller"
WATCH_METHOD = "/grpc.health.v1.Health/Watch"
ANONYMOUS = "-"


def caller_of(
    callers: LiveCallers, *, certificates: bool
) -> Callable[[grpc.aio.ServicerContext], str | None]:
    """The name of the caller a call's credentials name, as authentication would find
    it; None for a peer that is no caller."""

    def caller(ctx: grpc.aio.ServicerContext) -> str | None:
        current = callers.current
        found: Caller | None
        if certificates:
            name = auth.peer_identity(ctx)
            found = None if name is None else current.by_certificate_name.get(name)
        else:
            key = auth.api_key(ctx)
            found = None if key is None else current.for_api_key(key)
        return None if found is None else found.name

    return caller


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


async def _probe(ping: Callable[[], Awaitable[None]]) -> str | None:
    """None when the database answered, else the class of the error that says why not."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await ping()
    except Exception as exc:  # whatever the cause, the database did not answer
        return type(exc).__name__
    return None


async def watch_database(
    ping: Callable[[], Awaitable[None]],
    servicer: health.aio.HealthServicer,
    interval_seconds: float,
) -> NoReturn:
    """Probe the database every `interval_seconds` and say what it found, until cancelled."""
    serving = True
    while True:
        error = await _probe(ping)
        if (error is None) != serving:
            serving = error is None
            if serving:
                log.info("database reachable again: serving")
            else:
                log.warning("database unreachable: not serving", extra={"error": error})
            await set_serving(servicer, serving)
        await asyncio.sleep(interval_seconds)
