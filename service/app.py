"""The composition root: the settings, the database engine, the store, the ledger and the
gRPC server put together the one way (`assemble`), and served until SIGTERM or SIGINT
(`serve`), then stopped gracefully: health says NOT_SERVING, in-flight RPCs get the grace
period, and nothing is left half-written because every mutation is one transaction.
`python -m service` and the tests both start the service through here."""

import asyncio
import contextlib
import datetime
import logging
import signal
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service import processes, reload, settings, webhooks
from service.ledger.operations import Clock, Ledger, Policy
from service.ops import metrics
from service.rpc import health
from service.rpc.server import Built, build_server, mark_serving
from service.store import sampling, sweeper
from service.store.clock import DatabaseClock, skewed
from service.store.postgres import PostgresStore, create_engine
from service.store.reconcile import ScheduledReconcile

log = logging.getLogger("credits.service")


def policy(config: settings.Settings) -> Policy:
    """The configured limits the ledger's rules depend on."""
    return Policy(
        config.amount_max,
        config.metadata_keys,
        datetime.timedelta(seconds=config.reservation_lifetime_max_seconds),
    )


# Connections PostgreSQL keeps for superusers and for roles granted
# pg_use_reserved_connections; none of them are the service's.
CONNECTIONS_LEFT_TO_US = text(
    "SELECT current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
    " - COALESCE(current_setting('reserved_connections', true)::int, 0)"
)


async def check_connections(engine: AsyncEngine, config: settings.Settings) -> None:
    """Every process's pool, all full at once, fits in what PostgreSQL allows. A
    database that is down now is no reason not to start: RPCs say UNAVAILABLE until it
    is back."""
    try:
        async with engine.connect() as conn:
            allowed = int(await conn.scalar(CONNECTIONS_LEFT_TO_US) or 0)
    except (DBAPIError, OSError) as exc:
        log.warning("cannot check max_connections now", extra={"error": type(exc).__name__})
        return
    needed = config.processes * config.db_pool_size
    if needed > allowed:
        raise settings.SettingsError(
            f"CREDITS_PROCESSES times CREDITS_DB_POOL_SIZE is {needed} connections, more than"
            f" the {allowed} PostgreSQL's max_connections leaves"
        )


def database_clock(config: settings.Settings) -> DatabaseClock:
    """The ledger's clock: PostgreSQL's, as this instance measures it (docs/architecture.md,
    "Time"); its `measure` and `run` need the engine."""
    return DatabaseClock(config.clock_error_max_seconds, skewed(config.test_clock_skew_seconds))


class Assembled(NamedTuple):
    engine: AsyncEngine
    store: PostgresStore
    built: Built


def assemble(config: settings.Settings, url: str, clock: Clock, *, sharing: int = 1) -> Assembled:
    """The database engine, the store, the ledger and the gRPC server, put together the
    one way: `serve` uses it, and so do the tests (with a clock they move). `sharing`:
    how many processes serve the address together."""
    engine = create_engine(
        url,
        pool_size=config.db_pool_size,
        pool_timeout_seconds=config.db_pool_timeout_seconds,
        statement_timeout_seconds=config.db_statement_timeout_seconds,
        connect_timeout_seconds=config.db_connect_timeout_seconds,
        balance_alert_thresholds=config.balance_alert_thresholds,
    )
    store = PostgresStore(engine, job_types=config.job_types)
    ledger = Ledger(store, policy(config), clock, store.signals)
    return Assembled(engine, store, build_server(config, ledger, sharing=sharing))


async def serve(
    config: settings.Settings, url: str, worker: processes.Worker | None = None
) -> None:
    """Serve alone (`worker` None), or as one of config.processes workers."""
    sharing = 1 if worker is None else config.processes
    clock = database_clock(config)
    engine, store, built = assemble(config, url, clock, sharing=sharing)
    await check_connections(engine, config)
    # Before serving, so that the first calls have the database's time; a database that
    # is down now is measured when it is back (calls are UNAVAILABLE until then).
    await clock.measure(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.reload, config, built)
    if config.metrics_addr and worker is None:
        # Workers' metrics are served by their supervisor.
        metrics.serve(config.metrics_addr)
    await built.server.start()
    await mark_serving(built)
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(
            health.watch_database(store.ping, built.health, config.health_check_interval_seconds)
        ),
        asyncio.create_task(clock.run(engine, config.clock_sync_interval_seconds)),
    ]
    # One sweeper is enough (each account it settles is locked, whoever else runs), one
    # process samples the database's count of events for its instance, and one process
    # per instance competes for each webhook endpoint's lock (the instances share them)
    # and deletes old events.
    if worker is None or worker.index == 0:
        tasks.append(
            asyncio.create_task(sweeper.run(store, config.sweeper_interval_seconds, clock))
        )
        tasks.append(asyncio.create_task(sampling.EventsWrittenSampler(store).run()))
        for endpoint in config.webhook_endpoints:
            deliverer = webhooks.Deliverer(
                store,
                url,
                endpoint,
                settings.webhook_secret(endpoint.secret_file),
                datetime.timedelta(hours=config.webhook_retry_hours),
            )
            tasks.append(asyncio.create_task(deliverer.run()))
        tasks.append(
            asyncio.create_task(
                sweeper.run_event_retention(
                    store, datetime.timedelta(days=config.event_retention_days), clock
                )
            )
        )
    # One process per instance competes for the reconciler's lock (the instances share it).
    if config.reconcile_interval_seconds > 0 and (worker is None or worker.index == 0):
        reconciling = ScheduledReconcile(url, config.reconcile_interval_seconds)
        tasks.append(asyncio.create_task(reconciling.run()))
    where = {"address": config.grpc_addr, "env": config.env}
    if worker is None:
        log.info("serving", extra=where)
    else:
        # The service serves once all workers do; their supervisor says so.
        log.info("worker serving", extra={**where, "worker": worker.index})
        worker.tell_ready()
    await stop.wait()
    log.info("stopping", extra={"grace_seconds": config.shutdown_grace_seconds})
    await built.health.enter_graceful_shutdown()
    # WatchEvents streams end now, cleanly, instead of being cut at the grace's end.
    await store.signals.aclose()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await built.server.stop(grace=config.shutdown_grace_seconds)
    await built.limiter.aclose()
    await engine.dispose()
    log.info("stopped")
