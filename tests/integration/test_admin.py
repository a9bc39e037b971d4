"""`python -m service.admin account` shows an operator what the API would answer."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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


async def test_account_shows_control_characters_escaped(
    ops: Stub, database_url: str, admin_engine: AsyncEngine
) -> None:
    """A job id stored before Reserve refused control characters (or written by anything
    that is not the API): set the window title, clear the screen, forge a line."""
    account = await funded_account(ops, 500)
    reservation = (
        await ops.Reserve(
            pb.ReserveRequest(account_id=account, amount=7, idempotency_key=new_id()),
            timeout=T,
        )
    ).reservation
    forged = "\x1b]0;owned\x07\x1b[2J\x9b1m\n  forged reserved amount 1\\x1b"
    async with admin_engine.connect() as conn:
        await conn.execute(
            text("UPDATE reservations SET job_id = :j, job_type = :t WHERE reservation_id = :r"),
            {"j": forged, "t": "a\tb\x7f", "r": reservation.reservation_id},
        )
    shown = await admin(database_url, "account", account)
    assert shown.returncode == 0, shown.stderr
    assert not any(c in shown.stdout for c in "\x1b\x07\x9b\x7f\t"), "a control character got out"
    line = next(x for x in shown.stdout.splitlines() if reservation.reservation_id in x)
    assert (
        "a\\tb\\x7f/\\x1b]0;owned\\x07\\x1b[2J\\x9b1m\\n  forged reserved amount 1\\\\x1b" in line
    )
    assert not any(x.startswith("  forged") for x in shown.stdout.splitlines())


async def migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m service.admin migrate` with only `env` of the CREDITS_ settings."""
    scrubbed = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.admin", "migrate"],
        env={**scrubbed, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_development_migrate_runs_as_the_owner_of_the_embedded_database(
    database_dir: Path, database_url: str
) -> None:
    """As the README prints it: the embedded database of CREDITS_DEV_DIR, joined, not the
    service's restricted role (which may not even read alembic_version)."""
    done = await migrate({"CREDITS_ENV": "development", "CREDITS_DEV_DIR": str(database_dir)})
    assert done.returncode == 0, done.stderr
    assert "the development database is at the newest revision" in done.stdout
    assert "Traceback" not in done.stderr


async def test_migrate_as_a_role_that_may_not_is_one_line(database_url: str) -> None:
    done = await migrate({"CREDITS_DATABASE_URL": database_url})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "migrate: permission denied: the role of CREDITS_DATABASE_URL may not change the"
        " schema; set CREDITS_MIGRATION_DATABASE_URL to the schema owner's URL"
    ]
