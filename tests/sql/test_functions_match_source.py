"""The ledger's functions in a migrated database are exactly those of
service/store/sql/ledger.sql. A rule changed in the source without a migration that applies
it (or a migration edited after the fact) fails here: see docs/architecture.md "Changing a
rule"."""

import re
from pathlib import Path

import asyncpg

SOURCE = Path(__file__).resolve().parents[2] / "service" / "store" / "sql" / "ledger.sql"
DEFINITIONS = """
SELECT p.oid::regprocedure::text AS signature, pg_get_functiondef(p.oid) AS body
  FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'credits\\_%'
 ORDER BY 1
"""


async def assert_functions_are_the_sources(conn: asyncpg.Connection, source_sql: str) -> None:
    """The database's ledger functions are those `source_sql` defines, no more, no fewer
    (the source is applied in a transaction that is rolled back)."""
    migrated = {r["signature"]: r["body"] for r in await conn.fetch(DEFINITIONS)}
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(source_sql)
        from_source = {r["signature"]: r["body"] for r in await conn.fetch(DEFINITIONS)}
    finally:
        await transaction.rollback()
    assert from_source == migrated
    defined = re.findall(r"CREATE OR REPLACE FUNCTION (credits_\w+)", source_sql)
    assert sorted(defined) == sorted(signature.split("(")[0] for signature in migrated)


async def test_every_migrated_function_is_the_one_in_the_source(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await assert_functions_are_the_sources(conn, SOURCE.read_text())
    finally:
        await conn.close()
