"""Settles what time has decided (overdue reservations, expired grants) in the
background, so the ledger and its totals stay current for accounts nobody touches.
Correctness never waits for it: every RPC settles its own account first."""

import asyncio
import datetime
import logging

from service.ledger.operations import Clock
from service.ops import metrics
from service.store.postgres import PostgresStore

log = logging.getLogger("credits.sweeper")

# Accounts settled per round; each is its own short transaction.
ACCOUNTS_PER_ROUND_MAX = 500


async def sweep(store: PostgresStore, clock: Clock) -> int:
    """One round: settle each account that has something due, longest overdue first; an
    account that fails is logged and passed over, so it never blocks the others. How
    many were settled."""
    now = clock()
    settled = 0
    for account_id in await store.due_accounts(ACCOUNTS_PER_ROUND_MAX, now):
        try:
            await store.settle(account_id, now)
        except Exception as exc:
            metrics.SWEEP_FAILURES.inc()
            log.warning("settling an account failed", extra={"error": type(exc).__name__})
        else:
            settled += 1
    metrics.SWEPT_ACCOUNTS.inc(settled)
    return settled


async def run(store: PostgresStore, interval_seconds: float, clock: Clock) -> None:
    while True:
        try:
            settled = await sweep(store, clock)
            if settled:
                log.info("settled accounts", extra={"accounts": settled})
        except Exception as exc:
            # The next round retries; a sweeper must outlive a database restart.
            log.warning("sweep failed", extra={"error": type(exc).__name__})
        await asyncio.sleep(interval_seconds)


# How often the outbox's old events are deleted; retention is counted in days, so an
# hour late costs nothing.
EVENT_RETENTION_INTERVAL_SECONDS = 3600.0


async def run_event_retention(
    store: PostgresStore, retention: datetime.timedelta, clock: Clock
) -> None:
    """Delete events older than `retention`, by age only (the outbox is not the ledger)."""
    while True:
        try:
            deleted = await store.sweep_events(clock() - retention)
            if deleted:
                log.info("deleted old events", extra={"events": deleted})
        except Exception as exc:
            log.warning("event retention sweep failed", extra={"error": type(exc).__name__})
        await asyncio.sleep(EVENT_RETENTION_INTERVAL_SECONDS)
