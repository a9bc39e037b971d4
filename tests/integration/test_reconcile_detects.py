"""Reconcile finds what is wrong: on a database of its own, written around the
functions as a bug would, every broken invariant is printed and the exit status is 1."""

import asyncio
import os
import subprocess
import sys
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.store import database
from service.store.postgres import sqlalchemy_url
from tests.support import other_database


async def test_reconcile_reports_each_discrepancy_and_fails(
    admin_url: str, admin_engine: AsyncEngine
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    async with admin_engine.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    broken_url = other_database(admin_url, name)
    # Alembic runs its own event loop: give it a thread of its own.
    await asyncio.to_thread(database.migrate, broken_url)
    engine = create_async_engine(sqlalchemy_url(broken_url), isolation_level="AUTOCOMMIT")
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

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.admin", "reconcile"],
        env={**os.environ, "CREDITS_DATABASE_URL": broken_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    discrepancies = [line for line in done.stdout.splitlines() if line.startswith("DISCREPANCY")]
    assert any("victim" in line for line in discrepancies)
    assert any("entries 0, remaining 100" in line for line in discrepancies)
