"""The ledger's invariants (docs/contract.md), checked against the whole database. Each query
returns the rows that break one invariant; healthy means every query returns nothing."""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from service.ops import metrics
from service.store.postgres import sqlalchemy_url

log = logging.getLogger("credits.reconcile")


@dataclass(frozen=True)
class Invariant:
    name: str
    # Returns one row per discrepancy: (subject, detail).
    query: str


INVARIANTS = (
    Invariant(
        "ledger entries of an account add up to its grants' remaining amounts",
        """
        WITH entries AS (SELECT account_id, sum(amount) AS total FROM ledger_entries GROUP BY 1),
             remaining AS (SELECT account_id, sum(remaining_amount) AS total FROM grants GROUP BY 1)
        SELECT coalesce(e.account_id, r.account_id),
               format('entries %s, remaining %s', coalesce(e.total, 0), coalesce(r.total, 0))
          FROM entries e FULL JOIN remaining r ON r.account_id = e.account_id
         WHERE coalesce(e.total, 0) <> coalesce(r.total, 0)
        """,
    ),
    Invariant(
        "ledger entries of a grant add up to its remaining amount",
        """
        SELECT g.grant_id::text, format('entries %s, remaining %s', coalesce(e.total, 0),
               g.remaining_amount)
          FROM grants g
          LEFT JOIN (SELECT grant_id, sum(amount) AS total FROM ledger_entries GROUP BY 1) e
            ON e.grant_id = g.grant_id
         WHERE coalesce(e.total, 0) <> g.remaining_amount
        """,
    ),
    Invariant(
        "a grant's remaining amount is between 0 and its original amount",
        """
        SELECT grant_id::text, format('remaining %s of %s', remaining_amount, original_amount)
          FROM grants WHERE remaining_amount < 0 OR remaining_amount > original_amount
        """,
    ),
    Invariant(
        "a reservation's allocations add up to its amount and to what it gave back",
        """
        SELECT r.reservation_id::text,
               format('amount %s, allocated %s; returned %s, allocations returned %s', r.amount,
                      coalesce(a.allocated, 0), r.returned_amount, coalesce(a.returned, 0))
          FROM reservations r
          LEFT JOIN (SELECT reservation_id, sum(amount) AS allocated,
                            sum(returned_amount) AS returned
                       FROM allocations GROUP BY 1) a ON a.reservation_id = r.reservation_id
         WHERE coalesce(a.allocated, 0) <> r.amount OR coalesce(a.returned, 0) <> r.returned_amount
        """,
    ),
    Invariant(
        "every credit of a grant is remaining, held, spent, overrun, transferred, revoked,"
        " expired or paid to the account's debt",
        """
        SELECT g.grant_id::text,
               format('original %s <> remaining %s + held %s + spent %s + overrun %s'
                      ' + transferred %s + revoked %s + expired %s + debt paid %s',
                      g.original_amount, g.remaining_amount, coalesce(u.held, 0),
                      coalesce(u.spent, 0), coalesce(o.overrun, 0), coalesce(t.transferred, 0),
                      g.revoked_amount, g.expired_amount, g.debt_paid_amount)
          FROM grants g
          LEFT JOIN (
            SELECT a.grant_id,
                   sum(a.amount - a.returned_amount) FILTER (WHERE r.status = 1) AS held,
                   sum(a.amount - a.returned_amount) FILTER (WHERE r.status = 2) AS spent
              FROM allocations a JOIN reservations r ON r.reservation_id = a.reservation_id
             GROUP BY 1) u ON u.grant_id = g.grant_id
          LEFT JOIN (SELECT grant_id, -sum(amount) AS overrun FROM ledger_entries
                      WHERE kind = 'overrun' GROUP BY 1) o ON o.grant_id = g.grant_id
          LEFT JOIN (SELECT source_grant_id, sum(amount) AS transferred FROM transfer_lots
                      GROUP BY 1) t ON t.source_grant_id = g.grant_id
         WHERE g.original_amount <> g.remaining_amount + coalesce(u.held, 0) + coalesce(u.spent, 0)
                                    + coalesce(o.overrun, 0) + coalesce(t.transferred, 0)
                                    + g.revoked_amount + g.expired_amount + g.debt_paid_amount
        """,
    ),
    Invariant(
        "an overrun took from credits what it did not borrow as debt",
        """
        SELECT r.reservation_id::text,
               format('overrun %s - debt %s <> overrun entries %s', r.overrun_amount,
                      r.overrun_debt_amount, coalesce(o.taken, 0))
          FROM reservations r
          LEFT JOIN (SELECT reservation_id, -sum(amount) AS taken FROM ledger_entries
                      WHERE kind = 'overrun' GROUP BY 1) o ON o.reservation_id = r.reservation_id
         WHERE r.overrun_amount - r.overrun_debt_amount <> coalesce(o.taken, 0)
        """,
    ),
    Invariant(
        "a grant's debt repayment entries add up to what it paid of the debt",
        """
        SELECT g.grant_id::text,
               format('debt paid %s, repayment entries %s', g.debt_paid_amount,
                      coalesce(e.paid, 0))
          FROM grants g
          LEFT JOIN (SELECT grant_id, -sum(amount) AS paid FROM ledger_entries
                      WHERE kind = 'debt_repayment' GROUP BY 1) e ON e.grant_id = g.grant_id
         WHERE g.debt_paid_amount <> coalesce(e.paid, 0)
        """,
    ),
    Invariant(
        "an account's debt is what its overruns borrowed less what its grants paid back,"
        " and never negative",
        """
        SELECT a.account_id,
               format('debt %s <> borrowed %s - paid %s', a.debt, coalesce(b.borrowed, 0),
                      coalesce(p.paid, 0))
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(overrun_debt_amount) AS borrowed FROM reservations
                      GROUP BY 1) b ON b.account_id = a.account_id
          LEFT JOIN (SELECT account_id, sum(debt_paid_amount) AS paid FROM grants
                      GROUP BY 1) p ON p.account_id = a.account_id
         WHERE a.debt < 0 OR a.debt <> coalesce(b.borrowed, 0) - coalesce(p.paid, 0)
        """,
    ),
    Invariant(
        "a transfer's lots and entries move its amount from one account to the other",
        """
        SELECT t.transfer_id::text,
               format('amount %s, lots %s, out %s, in %s', t.amount, coalesce(l.total, 0),
                      coalesce(e.out_total, 0), coalesce(e.in_total, 0))
          FROM transfers t
          LEFT JOIN (SELECT transfer_id, sum(amount) AS total FROM transfer_lots GROUP BY 1) l
            ON l.transfer_id = t.transfer_id
          LEFT JOIN (
            SELECT e.transfer_id,
                   sum(e.amount) FILTER (WHERE e.kind = 'transfer_out'
                                         AND e.account_id = x.from_account_id) AS out_total,
                   sum(e.amount) FILTER (WHERE e.kind = 'transfer_in'
                                         AND e.account_id = x.to_account_id) AS in_total,
                   count(*) FILTER (WHERE e.account_id NOT IN (x.from_account_id,
                                                                x.to_account_id)) AS stray
              FROM ledger_entries e JOIN transfers x ON x.transfer_id = e.transfer_id
             GROUP BY 1) e ON e.transfer_id = t.transfer_id
         WHERE coalesce(l.total, 0) <> t.amount OR coalesce(e.out_total, 0) <> -t.amount
            OR coalesce(e.in_total, 0) <> t.amount OR coalesce(e.stray, 0) <> 0
        """,
    ),
    Invariant(
        "a TRANSFER grant is one lot of a transfer, with its source grant's expiry and priority",
        """
        SELECT d.grant_id::text,
               format('lots %s, amount %s of %s', count(l.transfer_id),
                      coalesce(sum(l.amount), 0), d.original_amount)
          FROM grants d
          LEFT JOIN transfer_lots l ON l.destination_grant_id = d.grant_id
          LEFT JOIN transfers t ON t.transfer_id = l.transfer_id
          LEFT JOIN grants s ON s.grant_id = l.source_grant_id
         WHERE d.source = 5  -- GrantSource.TRANSFER
         GROUP BY d.grant_id, d.original_amount
        HAVING count(l.transfer_id) <> 1 OR sum(l.amount) <> d.original_amount
            OR bool_or(s.expires_at IS DISTINCT FROM d.expires_at OR s.priority <> d.priority
                       OR t.to_account_id <> d.account_id OR s.account_id <> t.from_account_id)
        """,
    ),
    Invariant(
        "what revocations asked for and did not give back is revoked or unrecovered",
        """
        SELECT g.grant_id::text,
               format('asked %s - given back %s <> revoked %s + unrecovered %s',
                      coalesce(v.asked, 0), coalesce(v.given_back, 0), g.revoked_amount,
                      g.unrecovered_amount)
          FROM grants g
          LEFT JOIN (SELECT grant_id, sum(requested_amount) AS asked,
                            sum(restored_amount + cancelled_amount) AS given_back
                       FROM revocations GROUP BY 1) v
            ON v.grant_id = g.grant_id
         WHERE coalesce(v.asked, 0) - coalesce(v.given_back, 0)
               <> g.revoked_amount + g.unrecovered_amount
        """,
    ),
    Invariant(
        "a grant owes no more than its standing claims",
        """
        SELECT g.grant_id::text,
               format('revoked %s + unrecovered %s > claims %s', g.revoked_amount,
                      g.unrecovered_amount, coalesce(c.claimed, 0))
          FROM grants g
          LEFT JOIN (SELECT grant_id, sum(claimed_amount) AS claimed FROM revocation_claims
                      WHERE NOT withdrawn GROUP BY 1) c ON c.grant_id = g.grant_id
         WHERE g.revoked_amount + g.unrecovered_amount > coalesce(c.claimed, 0)
        """,
    ),
    Invariant(
        "a settled reservation captured and gave back exactly its amount",
        """
        SELECT reservation_id::text,
               format('status %s: confirmed %s + returned %s of %s + overrun %s', status,
                      confirmed_amount, returned_amount, amount, overrun_amount)
          FROM reservations
         WHERE (status = 1 AND confirmed_amount + returned_amount + overrun_amount <> 0)
            OR (status <> 1 AND confirmed_amount + returned_amount <> amount + overrun_amount)
        """,
    ),
)


@dataclass(frozen=True)
class Discrepancy:
    invariant: str
    subject: str
    detail: str


async def reconcile(conn: AsyncConnection) -> list[Discrepancy]:
    """Every discrepancy, read in one REPEATABLE READ snapshot so that concurrent
    traffic cannot make a healthy ledger look broken."""
    # Read only: it takes no row lock, so the ledger's writers never wait for it.
    await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    found: list[Discrepancy] = []
    async with conn.begin():
        for invariant in INVARIANTS:
            rows = (await conn.execute(text(invariant.query))).all()
            found.extend(Discrepancy(invariant.name, str(s), str(d)) for s, d in rows)
    return found


# The session-level advisory lock that makes one instance the reconciler: "credrec1".
LEADER_LOCK_KEY = 0x6372656472656331
# How often an instance that is not the reconciler tries to become it: a reconciler that
# died is replaced within this, so the schedule slips by at most this much.
LEADER_RETRY_SECONDS_MAX = 60.0
# A full read of the ledger may take far longer than a call's statement_timeout; this
# bounds it, so a stuck run fails (and alerts) instead of holding its snapshot for ever.
RECONCILE_STATEMENT_TIMEOUT_MS = 30 * 60 * 1000
TRY_LEAD = text("SELECT pg_try_advisory_lock(:key)")


class ScheduledReconcile:
    """Reconcile every `interval_seconds` on the instance that holds LEADER_LOCK_KEY.

    The lock is held by a connection of its own, outside the service's pool, for as long
    as the instance lives: if it dies, its connection closes, the lock is free and another
    instance takes over within LEADER_RETRY_SECONDS_MAX. Each run reads one REPEATABLE
    READ, READ ONLY snapshot on that connection."""

    def __init__(self, database_url: str, interval_seconds: float) -> None:
        self._url = sqlalchemy_url(database_url)
        self._interval_seconds = interval_seconds
        self.leading = False

    async def run(self) -> None:
        metrics.RECONCILE_INTERVAL.set(self._interval_seconds)
        engine = create_async_engine(
            self._url,
            poolclass=NullPool,
            connect_args={
                "server_settings": {
                    "application_name": "credits-reconcile",
                    "statement_timeout": str(RECONCILE_STATEMENT_TIMEOUT_MS),
                }
            },
        )
        try:
            while True:
                try:
                    async with engine.connect() as conn:
                        await self._lead(conn)
                except Exception as exc:
                    # The database went away (or this run failed): try again later.
                    metrics.RECONCILE_FAILURES.inc()
                    log.warning("scheduled reconcile failed", extra={"error": type(exc).__name__})
                finally:
                    self.leading = False
                await asyncio.sleep(min(self._interval_seconds, LEADER_RETRY_SECONDS_MAX))
        finally:
            with contextlib.suppress(Exception):
                await engine.dispose()

    async def _lead(self, conn: AsyncConnection) -> None:
        """Become the reconciler and reconcile on schedule; return when another
        instance is the reconciler."""
        async with conn.begin():
            leads = bool(await conn.scalar(TRY_LEAD, {"key": LEADER_LOCK_KEY}))
        if not leads:
            return
        self.leading = True
        log.info("this instance reconciles the ledger on schedule")
        while True:
            found = await reconcile(conn)
            metrics.RECONCILE_DISCREPANCIES.set(len(found))
            metrics.RECONCILE_COMPLETED.set(time.time())
            for discrepancy in found:
                log.error(
                    "reconcile found a discrepancy",
                    extra={"invariant": discrepancy.invariant, "subject": discrepancy.subject},
                )
            await asyncio.sleep(self._interval_seconds)
