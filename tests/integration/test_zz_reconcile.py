"""Runs after the other integration tests (files run in name order): whatever they did,
the ledger reconciles, and the admin command says so with exit status 0."""

import os
import subprocess
import sys

from sqlalchemy.ext.asyncio import AsyncEngine

from service import reconcile


async def test_ledger_reconciles_after_the_suite(admin_engine: AsyncEngine) -> None:
    async with admin_engine.connect() as conn:
        assert await reconcile.reconcile(conn) == []


def test_admin_reconcile_exits_zero_on_a_healthy_ledger(database_url: str) -> None:
    env = {**os.environ, "CREDITS_DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "service.admin", "reconcile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 discrepancies" in done.stdout
