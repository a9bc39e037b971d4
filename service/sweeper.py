"""Settles what time has decided (overdue reservations, expired grants) in the
background, so the ledger and its totals stay current for accounts nobody touches.
Correctness never waits for it: every RPC settles its own account first."""

import asyncio
import logging

from service import metrics
from service.store import PostgresStore

log = logging.getLogger("credits.sweeper")

# Accounts settled per round; each is its own short transaction.
ACCOUNTS_PER_ROUND_MAX = 500


async def run(store: PostgresStore, interval_seconds: float) -> None:
    while True:
        try:
            settled = await store.settle_due(ACCOUNTS_PER_ROUND_MAX)
            metrics.SWEPT_ACCOUNTS.inc(settled)
            if settled:
                log.info("settled accounts", extra={"accounts": settled})
        except Exception:
            # The next round retries; a sweeper must outlive a database restart.
            log.warning("sweep failed", exc_info=True)
        await asyncio.sleep(interval_seconds)
