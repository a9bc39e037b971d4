"""Session fixtures: one embedded PostgreSQL (migrated once), one dev PKI, one
production server on an ephemeral port, and clients for each development caller.
Tests isolate themselves with fresh account ids instead of rolled-back transactions,
because they go through the real server and its own connections."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pgserver
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from credits.v1 import credits_pb2_grpc
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service.store import database, reconcile
from service.store.postgres import sqlalchemy_url
from tests.support import MovableClock, RunningServer, open_channel, start_server


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The development PKI, with the development callers file as `callers.toml` and
    their API keys under `api-keys/`."""
    directory = tmp_path_factory.mktemp("pki")
    ensure_dev_pki(directory)
    ensure_dev_callers(directory / "callers.toml")
    return directory


@pytest.fixture(scope="session")
def database_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the session's embedded PostgreSQL, laid out as `make run`'s `.dev/`
    (data in `pgdata`): a development command given it as CREDITS_DEV_DIR joins it."""
    return tmp_path_factory.mktemp("db")


@pytest.fixture(scope="session")
def database_urls(database_dir: Path) -> Iterator[tuple[str, str]]:
    """(superuser URL, service URL) of a freshly migrated embedded PostgreSQL."""
    server = pgserver.get_server(database_dir / "pgdata", cleanup_mode="stop")
    admin_url = str(server.get_uri())
    database.migrate(admin_url)
    service_url = asyncio.run(database.ensure_dev_login(admin_url))
    try:
        yield admin_url, service_url
        # Whatever the session's tests did, in whatever order, the ledger reconciles.
        discrepancies = asyncio.run(_reconcile(admin_url))
        assert discrepancies == [], "the ledger does not reconcile after the session"
    finally:
        server.cleanup()


async def _reconcile(admin_url: str) -> list[reconcile.Discrepancy]:
    engine = create_async_engine(sqlalchemy_url(admin_url))
    try:
        async with engine.connect() as conn:
            return await reconcile.reconcile(conn)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def database_url(database_urls: tuple[str, str]) -> str:
    """The least-privilege URL the service connects with."""
    return database_urls[1]


@pytest.fixture(scope="session")
def admin_url(database_urls: tuple[str, str]) -> str:
    return database_urls[0]


@pytest.fixture(scope="session")
async def admin_engine(admin_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def clock() -> MovableClock:
    """The clock of `credits_server`: tests move it forward instead of sleeping."""
    return MovableClock()


@pytest.fixture(scope="session")
async def credits_server(
    database_url: str, pki: Path, clock: MovableClock
) -> AsyncIterator[RunningServer]:
    server = await start_server(database_url, pki, clock=clock)
    yield server
    await server.stop()


async def _stub_of(
    caller: str, server: RunningServer, pki: Path
) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    async with open_channel(pki, caller, server.address) as channel:
        yield credits_pb2_grpc.CreditsServiceStub(channel)


@pytest.fixture(scope="session")
async def ops(credits_server: RunningServer, pki: Path) -> AsyncIterator[Stub]:
    """Every RPC (the development `ops` caller)."""
    async for stub in _stub_of("ops", credits_server, pki):
        yield stub


@pytest.fixture(scope="session")
async def backend(credits_server: RunningServer, pki: Path) -> AsyncIterator[Stub]:
    """Reserve, Confirm, Release, GetBalance, ListUsage."""
    async for stub in _stub_of("backend", credits_server, pki):
        yield stub


@pytest.fixture(scope="session")
async def gateway(credits_server: RunningServer, pki: Path) -> AsyncIterator[Stub]:
    """Grant, Revoke, GetBalance."""
    async for stub in _stub_of("gateway", credits_server, pki):
        yield stub
