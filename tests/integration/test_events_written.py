"""credits_events_written_total, sampled from the outbox's sequence by the service's own
role, moves by the events a Grant wrote; credits_db_pool_size says the pool's size."""

from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.store.postgres import create_engine
from service.store.sampling import EventsWrittenSampler
from tests.support import RunningServer, funded_account

# Any size other than the test server's, so that the gauge shows this pool's.
POOL_SIZE = 3


def events_written() -> float:
    value = REGISTRY.get_sample_value("credits_events_written_total")
    assert value is not None
    return value


async def account_events(admin_engine: AsyncEngine, account: str) -> int:
    async with admin_engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM ledger_events WHERE account_id = :a"), {"a": account}
        )
    return int(count or 0)


async def test_events_written_moves_by_the_events_a_grant_wrote(
    credits_server: RunningServer, ops: Stub, admin_engine: AsyncEngine
) -> None:
    sampler = EventsWrittenSampler(credits_server.store)
    await sampler.sample()
    before = events_written()
    await sampler.sample()
    assert events_written() == before, "nothing was written, the counter moved"

    account = await funded_account(ops, 100)
    await sampler.sample()
    written = await account_events(admin_engine, account)
    assert written >= 1
    assert events_written() - before == written


async def test_the_first_sample_is_the_starting_point_not_a_count(
    credits_server: RunningServer, ops: Stub
) -> None:
    await funded_account(ops, 100)
    before = events_written()
    await EventsWrittenSampler(credits_server.store).sample()
    assert events_written() == before


async def test_the_pool_size_is_exported(database_url: str) -> None:
    engine = create_engine(
        database_url,
        pool_size=POOL_SIZE,
        pool_timeout_seconds=1.0,
        statement_timeout_seconds=1.0,
        connect_timeout_seconds=1.0,
    )
    try:
        assert REGISTRY.get_sample_value("credits_db_pool_size") == POOL_SIZE
    finally:
        await engine.dispose()
