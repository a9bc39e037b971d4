"""`python -m scripts.sqlmigration` writes a migration of only the ledger functions that
changed in the source. Each test edits a copy of the source, plans against the session's
migrated database, applies what the tool wrote inside a transaction that is rolled back,
and checks with the drift test's own comparison."""

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from scripts import sqlmigration
from tests.sql.test_functions_match_source import SOURCE, assert_functions_are_the_sources

CREATED = re.compile(r"CREATE OR REPLACE FUNCTION public\.(credits_\w+)")
DUE_ACCOUNTS = re.compile(
    r"\nCREATE OR REPLACE FUNCTION credits_due_accounts\(.*?\n\$\$;\n", re.DOTALL
)
EXAMPLE_FUNCTION = """
CREATE OR REPLACE FUNCTION credits_example() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1 $$;
"""


@pytest.fixture
async def conn(admin_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An owner's connection inside a transaction that is rolled back."""
    connection = await asyncpg.connect(admin_url)
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


def edited(old: str, new: str) -> str:
    source = SOURCE.read_text()
    assert source.count(old) == 1, old
    return source.replace(old, new)


async def may_execute(conn: asyncpg.Connection, role: str, function: str) -> bool:
    return bool(
        await conn.fetchval("SELECT has_function_privilege($1, $2, 'EXECUTE')", role, function)
    )


async def test_the_source_as_migrated_needs_no_migration(conn: asyncpg.Connection) -> None:
    assert (await sqlmigration.plan(conn, SOURCE.read_text())).changes == ()


async def test_a_changed_function_makes_a_migration_of_it_alone_that_matches_the_source(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    source = edited("'reservation lifetime exceeded'", "'reservation lifetime cap exceeded'")
    changes = await sqlmigration.plan(conn, source)
    assert changes.summary == ["credits_extend (changed)"]

    written = sqlmigration.write_migration(changes, "extend_message", "0099", "0098", tmp_path)
    script, upgrade, downgrade = (path.read_text() for path in written)
    assert [p.name for p in written] == [
        "0099_extend_message.py",
        "0099_extend_message.sql",
        "0099_extend_message.down.sql",
    ]
    assert 'revision: str = "0099"' in script
    assert 'down_revision: str | None = "0098"' in script
    assert CREATED.findall(upgrade) == ["credits_extend"]
    assert "lifetime cap exceeded" in upgrade
    assert "DROP" not in upgrade

    await conn.execute(upgrade)
    await assert_functions_are_the_sources(conn, source)
    await conn.execute(downgrade)
    await assert_functions_are_the_sources(conn, SOURCE.read_text())


async def test_new_removed_and_retyped_functions_are_created_dropped_and_recreated_with_grants(
    conn: asyncpg.Connection,
) -> None:
    source = DUE_ACCOUNTS.sub("\n", SOURCE.read_text()) + EXAMPLE_FUNCTION
    # A result type cannot change in place: the tool drops and creates the function.
    source = source.replace(
        "credits_account_credits_max() RETURNS bigint\n"
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1000000000000000000::bigint $$;",
        "credits_account_credits_max() RETURNS numeric\n"
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1000000000000000000::numeric $$;",
    )
    changes = await sqlmigration.plan(conn, source)
    assert changes.summary == [
        "credits_account_credits_max (changed)",
        "credits_due_accounts (removed)",
        "credits_example (new)",
    ]

    await conn.execute(changes.upgrade_sql())
    await assert_functions_are_the_sources(conn, source)
    assert await may_execute(conn, "credits_service", "credits_example()")
    assert await may_execute(conn, "credits_service", "credits_account_credits_max()")
    assert not await may_execute(conn, "public", "credits_example()")

    await conn.execute(changes.downgrade_sql())
    await assert_functions_are_the_sources(conn, SOURCE.read_text())
    due = "credits_due_accounts(timestamptz, integer)"
    assert await may_execute(conn, "credits_service", due)
    assert not await may_execute(conn, "public", due)


async def test_the_tool_migrates_a_scratch_database_and_writes_the_next_revision(
    tmp_path: Path,
) -> None:
    source = tmp_path / "ledger.sql"
    source.write_text(edited("'reservation lifetime exceeded'", "'lifetime cap exceeded'"))
    versions = tmp_path / "versions"
    versions.mkdir()
    command = [sys.executable, "-m", "scripts.sqlmigration", "extend_message"]
    paths = ["--source", str(source), "--versions", str(versions)]
    ran = await asyncio.to_thread(
        subprocess.run, command + paths, capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stderr
    head = sqlmigration.head_revision()
    stem = f"{sqlmigration.next_revision(head)}_extend_message"
    assert sorted(p.name for p in versions.iterdir()) == [
        f"{stem}.down.sql",
        f"{stem}.py",
        f"{stem}.sql",
    ]
    assert CREATED.findall((versions / f"{stem}.sql").read_text()) == ["credits_extend"]
    assert f'down_revision: str | None = "{head}"' in (versions / f"{stem}.py").read_text()
