"""`python -m service`: the composition root. Reads the settings, opens the database,
serves gRPC until SIGTERM or SIGINT, then stops gracefully: health says NOT_SERVING,
in-flight RPCs get the grace period, and nothing is left half-written because every
mutation is one transaction."""

import asyncio
import contextlib
import datetime
import logging
import signal
import sys
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncEngine

from service import database, health, logs, metrics, reload, settings, sweeper
from service.ledger import Clock, Ledger, Policy, utc_now
from service.server import Built, build_server, mark_serving
from service.store import PostgresStore, create_engine

log = logging.getLogger("credits.service")


def policy(config: settings.Settings) -> Policy:
    """The configured limits the ledger's rules depend on."""
    return Policy(
        config.amount_max,
        config.metadata_keys,
        datetime.timedelta(seconds=config.reservation_lifetime_max_seconds),
    )


def open_database(config: settings.Settings) -> tuple[str, database.Embedded | None]:
    """The URL to serve from, and the embedded database when there is one to keep alive."""
    if config.database_url is not None:
        return config.database_url, None
    # Development without a configured database: the embedded one under .dev/.
    embedded = database.prepare_embedded(config.dev_dir)
    return embedded.service_url, embedded


class Assembled(NamedTuple):
    engine: AsyncEngine
    store: PostgresStore
    built: Built


def assemble(config: settings.Settings, url: str, clock: Clock) -> Assembled:
    """The database engine, the store, the ledger and the gRPC server, put together the
    one way: `serve` uses it, and so do the tests (with a clock they move)."""
    engine = create_engine(
        url,
        pool_size=config.db_pool_size,
        pool_timeout_seconds=config.db_pool_timeout_seconds,
        statement_timeout_seconds=config.db_statement_timeout_seconds,
        connect_timeout_seconds=config.db_connect_timeout_seconds,
    )
    store = PostgresStore(engine)
    return Assembled(engine, store, build_server(config, Ledger(store, policy(config), clock)))


async def serve(config: settings.Settings, url: str) -> None:
    engine, store, built = assemble(config, url, utc_now)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.reload, config, built)
    if config.metrics_addr:
        metrics.serve(config.metrics_addr)
    await built.server.start()
    await mark_serving(built)
    sweeping = asyncio.create_task(sweeper.run(store, config.sweeper_interval_seconds, utc_now))
    monitoring = asyncio.create_task(
        health.watch_database(store.ping, built.health, config.health_check_interval_seconds)
    )
    log.info("serving", extra={"address": config.grpc_addr, "env": config.env})
    await stop.wait()
    log.info("stopping", extra={"grace_seconds": config.shutdown_grace_seconds})
    await built.health.enter_graceful_shutdown()
    for task in (sweeping, monitoring):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await built.server.stop(grace=config.shutdown_grace_seconds)
    await built.limiter.aclose()
    await engine.dispose()
    log.info("stopped")


def main() -> None:
    logs.configure()
    try:
        config = settings.load()
    except settings.SettingsError as exc:
        print(f"credits service cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    url, _embedded = open_database(config)
    asyncio.run(serve(config, url))


if __name__ == "__main__":
    main()
