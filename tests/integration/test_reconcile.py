"""The ledger reconciles after every kind of operation, and the admin command says so
with exit status 0. The test makes its own traffic, so it holds wherever it runs; that
the whole suite's traffic reconciles is checked when the session's database is stopped
(tests/conftest.py)."""

import datetime
import os
import subprocess
import sys

from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.store import reconcile
from tests.integration.test_ledger_rules import grant, reserve
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import MovableClock, new_id

RESERVATION_TTL_SECONDS = 60
GRANT_LIFETIME_SECONDS = 120


async def every_kind_of_operation(ops: Stub, clock: MovableClock) -> None:
    """Grants (one expiring), a partial confirm, a release, an expired hold, a refund-like
    revoke with debt, and a withdrawn claim: on accounts of their own."""
    account = new_id()
    kept = await grant(ops, account, 1000)
    await grant(
        ops,
        account,
        100,
        expires_in=datetime.timedelta(seconds=GRANT_LIFETIME_SECONDS),
        clock=clock,
    )
    confirmed = await reserve(ops, account, 300)
    await ops.Confirm(
        pb.ConfirmRequest(account_id=account, reservation_id=confirmed.reservation_id, amount=200),
        timeout=T,
    )
    released = await reserve(ops, account, 100)
    await ops.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=released.reservation_id), timeout=T
    )
    await reserve(ops, account, 250, ttl_seconds=RESERVATION_TTL_SECONDS)
    await ops.Revoke(
        pb.RevokeRequest(
            account_id=account,
            grant_id=kept.grant_id,
            amount=900,
            idempotency_key=new_id("revoke"),
            cumulative_series="refund:reconcile",
        ),
        timeout=T,
    )
    await ops.Revoke(
        pb.RevokeRequest(
            account_id=account,
            grant_id=kept.grant_id,
            idempotency_key=new_id("dispute"),
            cumulative_series="dispute:reconcile",
        ),
        timeout=T,
    )
    await ops.Revoke(
        pb.RevokeRequest(
            account_id=account,
            grant_id=kept.grant_id,
            idempotency_key=new_id("won"),
            cumulative_series="dispute:reconcile",
            withdraw=True,
        ),
        timeout=T,
    )
    # The hold and the short grant expire; reading the balance settles both.
    clock.advance(max(RESERVATION_TTL_SECONDS, GRANT_LIFETIME_SECONDS) + 1)
    await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)


async def test_the_ledger_reconciles_after_every_kind_of_operation(
    ops: Stub, clock: MovableClock, admin_engine: AsyncEngine
) -> None:
    await every_kind_of_operation(ops, clock)

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
