"""Reconcile's transfer identities find what is wrong: on a database of its own, with the
transfer constraint trigger switched off (as a bug or a hand edit around the functions
could leave things), a transfer whose lots and entries do not move its amount, and a
TRANSFER grant that no lot made, are each reported."""

import asyncio
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.store import database
from service.store.postgres import sqlalchemy_url
from service.store.reconcile import reconcile
from tests.support import other_database


async def test_reconcile_reports_unbalanced_transfers_and_orphan_transfer_grants(
    admin_url: str, admin_engine: AsyncEngine
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    async with admin_engine.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    broken_url = other_database(admin_url, name)
    # Alembic runs its own event loop: give it a thread of its own.
    await asyncio.to_thread(database.migrate, broken_url)
    engine = create_async_engine(sqlalchemy_url(broken_url), isolation_level="AUTOCOMMIT")
    transfer_id, orphan_id = uuid.uuid4(), uuid.uuid4()
    try:
        async with engine.connect() as conn:
            await conn.execute(text("ALTER TABLE transfers DISABLE TRIGGER transfers_balanced"))
            await conn.execute(
                text("INSERT INTO accounts (account_id) VALUES ('giver'), ('taker')")
            )
            # A transfer of 50 that moved nothing.
            await conn.execute(
                text(
                    "INSERT INTO transfers (transfer_id, from_account_id, to_account_id,"
                    " amount, caller, created_at) VALUES (:t, 'giver', 'taker', 50, 'ops', now())"
                ),
                {"t": transfer_id},
            )
            # A TRANSFER grant no transfer made, with its entry (so that only the
            # transfer identities can see it).
            await conn.execute(
                text(
                    "INSERT INTO grants (grant_id, account_id, source, original_amount,"
                    " remaining_amount) VALUES (:g, 'taker', 5, 30, 30)"
                ),
                {"g": orphan_id},
            )
            await conn.execute(
                text(
                    "INSERT INTO ledger_entries (account_id, grant_id, kind, amount)"
                    " VALUES ('taker', :g, 'grant', 30)"
                ),
                {"g": orphan_id},
            )
        async with engine.connect() as conn:
            found = await reconcile(conn)
    finally:
        await engine.dispose()
    by_subject = {d.subject: d for d in found}
    assert by_subject[str(transfer_id)].detail == "amount 50, lots 0, out 0, in 0"
    assert by_subject[str(orphan_id)].invariant.startswith("a TRANSFER grant is one lot")
    assert {d.subject for d in found} == {str(transfer_id), str(orphan_id)}
