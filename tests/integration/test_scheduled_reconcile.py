"""Reconciliation on a schedule: of two instances one reconciles (the advisory lock), the
other takes over when it goes, and the exported discrepancies move when one is planted by
hand. On a scratch database, so that the session's own final reconcile stays clean."""

import asyncio
import time
import uuid
from collections.abc import Callable

from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.ops import metrics
from service.store import database
from service.store.postgres import sqlalchemy_url
from service.store.reconcile import ScheduledReconcile
from tests.support import other_database

INTERVAL_SECONDS = 0.2
WAIT_SECONDS_MAX = 20.0


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_one_of_two_instances_reconciles_and_its_metric_moves_on_a_discrepancy(
    admin_url: str, admin_engine: AsyncEngine
) -> None:
    name = f"scheduled_{uuid.uuid4().hex[:8]}"
    async with admin_engine.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    url = other_database(admin_url, name)
    await asyncio.to_thread(database.migrate, url)

    instances = [ScheduledReconcile(url, INTERVAL_SECONDS) for _ in range(2)]
    tasks = [asyncio.create_task(instance.run()) for instance in instances]
    started = time.time()
    try:
        await until(lambda: any(i.leading for i in instances), "an instance leads")
        await until(
            lambda: sample("credits_reconcile_last_completed_timestamp_seconds") > started,
            "a scheduled reconcile completes",
        )
        # Several rounds of both: still exactly one reconciler.
        await asyncio.sleep(INTERVAL_SECONDS * 3)
        assert [i.leading for i in instances].count(True) == 1
        assert sample("credits_reconcile_discrepancies") == 0
        assert sample("credits_reconcile_interval_seconds") == INTERVAL_SECONDS

        engine = create_async_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("INSERT INTO accounts (account_id) VALUES ('victim')"))
                # A grant whose credit never reached the ledger.
                await conn.execute(
                    text(
                        "INSERT INTO grants (grant_id, account_id, source, original_amount,"
                        " remaining_amount) VALUES (gen_random_uuid(), 'victim', 1, 100, 100)"
                    )
                )
        finally:
            await engine.dispose()
        await until(
            lambda: sample("credits_reconcile_discrepancies") > 0, "the discrepancy is exported"
        )

        # The reconciler goes: its connection closes, the other takes its lock over.
        leader = next(n for n, i in enumerate(instances) if i.leading)
        tasks[leader].cancel()
        await asyncio.gather(tasks[leader], return_exceptions=True)
        follower = instances[1 - leader]
        await until(lambda: follower.leading, "the other instance takes over")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The gauges are this test process's: leave them as a fresh process has them.
        metrics.RECONCILE_DISCREPANCIES.set(0)
        metrics.RECONCILE_COMPLETED.set(0)
        metrics.RECONCILE_INTERVAL.set(0)
        async with admin_engine.connect() as conn:
            await conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
