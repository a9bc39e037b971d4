"""The outbox's order: events are read in an order no late commit can break
(docs/architecture.md, "Events"). Each test commits real, concurrent transactions on
connections of their own, on fresh accounts."""

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
GRANT = (
    "SELECT grant_id FROM credits_grant('test', $1, '\\x00', $2, $3, 1::smallint, NULL, NULL,"
    " 0, '', '{}', $4, NULL)"
)
READ = (
    "SELECT (r.out_event).event_id, (r.out_event).stream_position, (r.out_event).seq,"
    " (r.out_event).grant_id, r.out_horizon FROM credits_read_events($1, $2, $3, $4, 1000) r"
)


@pytest.fixture
async def connections(database_url: str) -> AsyncIterator[list[asyncpg.Connection]]:
    opened = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        yield opened
    finally:
        for conn in opened:
            await conn.close()


async def _grant(conn: asyncpg.Connection, account: str, amount: int) -> uuid.UUID:
    grant_id: uuid.UUID = await conn.fetchval(GRANT, uuid.uuid4().hex, account, amount, NOW)
    return grant_id


class Reader:
    """A stream reader that remembers its cursor, as WatchEvents does."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.position, self.seq = 0, 0
        self.seen: list[uuid.UUID] = []

    async def start(self) -> None:
        """From the oldest retained event (other tests may have swept older ones)."""
        row = await self.conn.fetchrow(
            "SELECT coalesce(max(deleted_through_position), 0) AS p,"
            " coalesce(max(deleted_through_seq), 0) AS s FROM event_retention"
        )
        assert row is not None
        self.position, self.seq = row["p"], row["s"]

    async def read(self) -> list[uuid.UUID]:
        """The grants of the events read since the last read."""
        got = []
        for row in await self.conn.fetch(READ, self.position, self.seq, None, ["granted"]):
            if row["event_id"] is None:
                continue
            self.position, self.seq = row["stream_position"], row["seq"]
            got.append(row["grant_id"])
        self.seen += got
        return got


async def test_an_event_committed_late_is_not_skipped(
    connections: list[asyncpg.Connection],
) -> None:
    first, second, reading = connections
    a, b = (f"ev-{uuid.uuid4().hex[:10]}" for _ in range(2))
    reader = Reader(reading)
    await reader.start()
    await reader.read()
    before = len(reader.seen)
    early = first.transaction()
    await early.start()
    early_grant = await _grant(first, a, 10)  # written first: the lower sequence number
    late = second.transaction()
    await late.start()
    late_grant = await _grant(second, b, 20)
    await late.commit()  # the later-sequenced event commits first
    # While the earlier transaction runs, nothing at or after it is readable: reading the
    # later event now would move the cursor past the earlier one.
    assert late_grant not in await reader.read()
    await early.commit()
    await reader.read()
    new = reader.seen[before:]
    assert early_grant in new
    assert late_grant in new
    assert new.index(early_grant) < new.index(late_grant)
    # Exactly once: reading again from the cursor gives neither again.
    await reader.read()
    assert reader.seen[before:].count(early_grant) == 1
    assert reader.seen[before:].count(late_grant) == 1


async def test_an_accounts_events_keep_its_commit_order(
    connections: list[asyncpg.Connection],
) -> None:
    """A transaction that got its id first but the account's lock second still comes
    after the one that held the lock first."""
    first, second, reading = connections
    account = f"ev-{uuid.uuid4().hex[:10]}"
    await _grant(reading, account, 1)  # the account exists
    older = first.transaction()
    await older.start()
    await first.fetchval("SELECT pg_current_xact_id()")  # the older transaction id
    newer = second.transaction()
    await newer.start()
    newer_grant = await _grant(second, account, 20)  # takes the account's lock
    blocked = first.fetchval(GRANT, uuid.uuid4().hex, account, 30, NOW)
    waiting = asyncio.ensure_future(blocked)
    await asyncio.sleep(0.2)
    assert not waiting.done()  # waits for the account's lock
    await newer.commit()
    older_grant = await waiting
    await older.commit()
    rows = await reading.fetch(
        "SELECT grant_id FROM ledger_events WHERE account_id = $1 AND event_type = 'granted'"
        " ORDER BY stream_position, seq",
        account,
    )
    order = [r["grant_id"] for r in rows]
    assert order.index(newer_grant) < order.index(older_grant)


SET_PRICE = "SELECT version FROM credits_set_price('ops', $1, $2, 'page', $3, 'why', $3, NULL)"
PRICE_EVENTS = (
    "SELECT price_version, unit_price FROM ledger_events WHERE job_type = $1"
    " AND event_type = 'price_set' AND account_id IS NULL ORDER BY stream_position, seq"
)


async def test_two_set_prices_of_a_job_type_appear_in_commit_order(
    connections: list[asyncpg.Connection],
) -> None:
    """The second SetPrice of a job type waits for the first, and its event comes after
    the first's even when its transaction got the older id."""
    first, second, reading = connections
    job_type = f"ev-{uuid.uuid4().hex[:10]}"
    older = second.transaction()
    await older.start()
    await second.fetchval("SELECT pg_current_xact_id()")  # the older transaction id
    newer = first.transaction()
    await newer.start()
    newer_version = await first.fetchval(SET_PRICE, job_type, 10, NOW)
    waiting = asyncio.ensure_future(second.fetchval(SET_PRICE, job_type, 20, NOW))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # waits for the job type's lock
    await newer.commit()
    older_version = await waiting
    await older.commit()
    assert older_version > newer_version  # numbered in the order the lock was held
    rows = await reading.fetch(PRICE_EVENTS, job_type)
    assert [(r["price_version"], r["unit_price"]) for r in rows] == [
        (newer_version, 10),
        (older_version, 20),
    ]
    # The stream, read with a type filter, carries both in that order, without an account.
    reader = Reader(reading)
    await reader.start()
    read = await reading.fetch(
        "SELECT (r.out_event).price_version, (r.out_event).account_id"
        " FROM credits_read_events($2, $3, NULL, '{price_set}', 100000) r"
        " WHERE (r.out_event).job_type = $1",
        job_type,
        reader.position,
        reader.seq,
    )
    assert [(r["price_version"], r["account_id"]) for r in read] == [
        (newer_version, None),
        (older_version, None),
    ]


async def test_a_set_price_waits_for_its_job_type_at_most_its_lock_timeout(
    connections: list[asyncpg.Connection],
) -> None:
    holder, waiter, _ = connections
    job_type = f"ev-{uuid.uuid4().hex[:10]}"
    async with holder.transaction():
        await holder.fetchval(SET_PRICE, job_type, 10, NOW)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await waiter.fetchval(
                "SELECT version FROM credits_set_price('ops', $1, 20, 'page', $2, '', $2, 100)",
                job_type,
                NOW,
            )


async def test_a_set_price_that_rolls_back_writes_no_event(
    connections: list[asyncpg.Connection],
) -> None:
    conn, _, reading = connections
    job_type = f"ev-{uuid.uuid4().hex[:10]}"
    undone = conn.transaction()
    await undone.start()
    await conn.fetchval(SET_PRICE, job_type, 10, NOW)
    await undone.rollback()
    assert await reading.fetch(PRICE_EVENTS, job_type) == []


async def test_only_price_events_lack_an_account(connections: list[asyncpg.Connection]) -> None:
    conn = connections[0]
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO ledger_events (stream_position, event_type, account_id, occurred_at,"
            " amount, returned_amount, unrecovered_amount, available_after)"
            " VALUES (1, 'granted', NULL, $1, 1, 0, 0, 1)",
            NOW,
        )
