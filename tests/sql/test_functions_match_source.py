"""The ledger's functions in a migrated database are exactly those of
service/store/sql/ledger.sql. A rule changed in the source without a migration that applies
it (or a migration edited after the fact) fails here: see docs/architecture.md,
"Changing a rule"."""

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


async def test_every_migrated_function_is_the_one_in_the_source(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        migrated = {r["signature"]: r["body"] for r in await conn.fetch(DEFINITIONS)}
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(SOURCE.read_text())
            from_source = {r["signature"]: r["body"] for r in await conn.fetch(DEFINITIONS)}
        finally:
            await transaction.rollback()
    finally:
        await conn.close()
    assert from_source == migrated
    defined = re.findall(r"CREATE OR REPLACE FUNCTION (credits_\w+)", SOURCE.read_text())
    assert sorted(defined) == sorted(signature.split("(")[0] for signature in migrated)
