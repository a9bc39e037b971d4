"""`python -m service.admin account` shows an operator what the API would answer."""

import asyncio
import os
import subprocess
import sys

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import funded_account, new_id


async def admin(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.admin", *args],
        env={**os.environ, "CREDITS_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_account_shows_balance_grants_and_reservations(ops: Stub, database_url: str) -> None:
    account = await funded_account(ops, 500)
    reservation = (
        await ops.Reserve(
            pb.ReserveRequest(
                account_id=account, amount=120, idempotency_key=new_id(), job_type="story"
            ),
            timeout=T,
        )
    ).reservation
    shown = await admin(database_url, "account", account)
    assert shown.returncode == 0, shown.stderr
    assert f"account {account}: available 380, reserved 120" in shown.stdout
    assert "purchase     original 500 remaining 380" in shown.stdout
    assert f"{reservation.reservation_id} reserved" in shown.stdout


async def test_account_shows_the_release_reason_with_control_characters_escaped(
    ops: Stub, database_url: str
) -> None:
    account = await funded_account(ops, 500)
    reserved = await ops.Reserve(
        pb.ReserveRequest(account_id=account, amount=50, idempotency_key=new_id()), timeout=T
    )
    reason = "failed: WorkFailed\x1b[2J\u202e\nforged line"
    await ops.Release(
        pb.ReleaseRequest(
            account_id=account, reservation_id=reserved.reservation.reservation_id, reason=reason
        ),
        timeout=T,
    )
    shown = await admin(database_url, "account", account)
    assert shown.returncode == 0, shown.stderr
    (line,) = (
        line for line in shown.stdout.splitlines() if reserved.reservation.reservation_id in line
    )
    # One line, ending with the reason as stored, escaped: nothing reaches the terminal raw.
    assert line.endswith(r" reason failed: WorkFailed\x1b[2J\u202e\nforged line")
    assert shown.stdout.count("forged line") == 1
    assert "\x1b" not in shown.stdout
    assert "\u202e" not in shown.stdout


async def test_account_refuses_a_malformed_id(database_url: str) -> None:
    shown = await admin(database_url, "account", "not an id")
    assert shown.returncode == 2
