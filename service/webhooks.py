"""Signed webhooks: every event POSTed to the operator's endpoint (CREDITS_WEBHOOK_URL),
at least once and in order per account, from the outbox (docs/architecture.md, "Events").

Order is promised per account (and among price events), so the events of a batch go out
on DELIVERY_LANES connections side by side, each account's in order. Delivery state is a
row of `webhook_deliveries` (the cursor after which nothing is left undone, and since
when events have been failing), saved every CURSOR_SAVE_INTERVAL_SECONDS while a batch
goes out and at its end, so a restart or `kill -9` resumes there: an event may come
twice (de-duplicate on its id), never not at all. One worker at a time across every
instance and process: the one that holds a PostgreSQL advisory lock on its own
connection; the others wait for it. The ledger never waits for an endpoint: the worker
only reads the outbox.

Each POST carries the event as JSON, `Credits-Event-Id`, and `Credits-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` (modelled on Stripe's);
`credits_client.verify_webhook` checks it. A failure (no 2xx within
DELIVERY_TIMEOUT_SECONDS) is retried with exponential backoff and jitter; after
CREDITS_WEBHOOK_RETRY_HOURS of failures the event is given up on (logged, counted) and
the next one goes.
"""

import asyncio
import concurrent.futures
import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from typing import Any

import asyncpg
import urllib3

from service.ledger import failures, limits
from service.ledger.model import Event, EventCursor
from service.ledger.operations import EVENT_SEQ_AFTER_ALL
from service.ops import metrics
from service.store.postgres import PostgresStore
from service.webhook_endpoints import WebhookEndpoint

log = logging.getLogger("credits.webhooks")

SIGNATURE_HEADER = "Credits-Signature"
EVENT_ID_HEADER = "Credits-Event-Id"
# An endpoint answers within this or the attempt failed.
DELIVERY_TIMEOUT_SECONDS = 10.0
# Backoff between attempts of one event: doubling from the first, capped, each times a
# random factor in [1 - BACKOFF_JITTER_FRACTION, 1] so that retries spread out.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 600.0
BACKOFF_JITTER_FRACTION = 0.5
# Connections POSTing side by side, each carrying one account's events at a time: enough to
# keep up with the ledger on an endpoint that answers in milliseconds.
DELIVERY_LANES = 8
# While a backoff is waited out, the lag gauge is set again this often.
LAG_REFRESH_SECONDS = 1.0
# While a batch is delivered, its acknowledged part is saved at most this often: a restart
# then sends again at most this long's worth of events (never loses any).
CURSOR_SAVE_INTERVAL_SECONDS = 0.25
# An endpoint's cursor is saved this often at most while nothing is sent to it (a filtered
# endpoint reads past the events it does not get): a restart reads those again, and the
# retention sweep never passes a cursor that is up to date. Not more often: the save is a
# write, which moves the horizon, so an idle endpoint saves at every interval.
IDLE_CURSOR_SAVE_INTERVAL_SECONDS = 10.0
# A worker that does not hold the lock tries again after this long: how long events wait
# when the holder dies (a kill -9 frees the lock with its connection). One cheap query a
# second per instance.
LOCK_RETRY_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 5.0
HTTP_OK_MIN, HTTP_OK_MAX = 200, 299

LOAD = (
    "SELECT delivered_position, delivered_seq, failing_since FROM webhook_deliveries"
    " WHERE endpoint = $1"
)
START = (
    "INSERT INTO webhook_deliveries (endpoint, delivered_position, delivered_seq, updated_at)"
    " VALUES ($1, $2, $3, now()) ON CONFLICT (endpoint) DO NOTHING"
)
SAVE = (
    "UPDATE webhook_deliveries SET delivered_position = $2, delivered_seq = $3,"
    " failing_since = $4, updated_at = now() WHERE endpoint = $1"
)


def signature(body: bytes, secret: bytes, timestamp: int) -> str:
    """The Credits-Signature header of `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event_body(event: Event) -> bytes:
    """An event as its webhook's JSON body."""
    price = event.price
    document: dict[str, Any] = {
        "event_id": str(event.event_id),
        "cursor": str(event.cursor),
        "type": event.type.name,
        # null for price events, which belong to no account.
        "account_id": event.account_id or None,
        "occurred_at": event.occurred_at.isoformat(),
        "grant_id": str(event.grant_id) if event.grant_id else None,
        "reservation_id": str(event.reservation_id) if event.reservation_id else None,
        "revocation_id": str(event.revocation_id) if event.revocation_id else None,
        "caller": event.caller,
        "amount": event.amount,
        "returned_amount": event.returned_amount,
        "unrecovered_amount": event.unrecovered_amount,
        "threshold": event.threshold,
        "available_after": event.available_after,
        "price": None
        if price is None
        else {
            "job_type": price.job_type,
            "version": price.version,
            "unit_price": price.unit_price,
            "unit": price.unit,
            "retired": price.retired,
            "effective_at": price.effective_at.isoformat(),
            "set_at": price.set_at.isoformat(),
            "set_by": price.set_by,
            "reason": price.reason,
        },
    }
    return json.dumps(document, separators=(",", ":")).encode()


def backoff_seconds(failures: int) -> float:
    base = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2.0 ** max(0, failures - 1))
    return base * random.uniform(1 - BACKOFF_JITTER_FRACTION, 1)


def _post(pool: urllib3.PoolManager, url: str, body: bytes, headers: dict[str, str]) -> int:
    response = pool.request(
        "POST",
        url,
        body=body,
        headers=headers,
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=DELIVERY_TIMEOUT_SECONDS),
        # An attempt is one POST: retries are the deliverer's, with its backoff, and a
        # redirect is an endpoint's misconfiguration, not an acknowledgement.
        retries=False,
        redirect=False,
    )
    return response.status


class Deliverer:
    """Delivers the outbox to one endpoint; `run` until cancelled."""

    def __init__(
        self,
        store: PostgresStore,
        database_url: str,
        endpoint: WebhookEndpoint,
        secret: bytes,
        retry: datetime.timedelta,
    ) -> None:
        self._store = store
        self._database_url = database_url
        self._url = endpoint.url
        self._types = endpoint.types
        self._lock_key = endpoint.lock_key
        self._secret = secret
        self._retry = retry
        self._label = endpoint.name
        # A kept-alive connection per lane, not a handshake per event.
        self._pool = urllib3.PoolManager(maxsize=DELIVERY_LANES)
        self._posters = concurrent.futures.ThreadPoolExecutor(
            DELIVERY_LANES, thread_name_prefix="credits-webhook"
        )
        # Since when the batch in flight has been failing; kept in the cursor row so
        # that a restart does not start the retry window again.
        self._failing_since: datetime.datetime | None = None
        # The lanes share the lock's connection for that one write.
        self._conn_lock = asyncio.Lock()
        # Failed attempts since the last delivery, across the lanes (the alert's "in a
        # row": a window of counters would let one old success hide an outage).
        self._consecutive_failures = 0

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._posters.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self._database_url, timeout=CONNECT_TIMEOUT_SECONDS)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("webhooks cannot connect", extra={"error": type(exc).__name__})
                await asyncio.sleep(LOCK_RETRY_SECONDS)
                continue
            try:
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                    await self._deliver(conn)
                else:
                    # Another instance delivers: this one's figures are not the endpoint's.
                    metrics.WEBHOOK_LAG_SECONDS.labels(self._label).set(0)
                    metrics.WEBHOOK_CONSECUTIVE_FAILURES.labels(self._label).set(0)
            except Exception as exc:
                # The database gone, the lock's connection lost: start again, from the
                # stored cursor; a delivery worker must outlive an outage.
                log.warning("webhook delivery stopped", extra={"error": type(exc).__name__})
            finally:
                # Closing the connection releases the lock for another worker.
                with contextlib.suppress(Exception):
                    await conn.close(timeout=CONNECT_TIMEOUT_SECONDS)
            await asyncio.sleep(LOCK_RETRY_SECONDS)

    async def _deliver(self, conn: asyncpg.Connection) -> None:
        """Holding the lock: deliver from the stored cursor on, for good."""
        metrics.WEBHOOK_CONSECUTIVE_FAILURES.labels(self._label).set(self._consecutive_failures)
        row = await conn.fetchrow(LOAD, self._url)
        if row is None:
            # A new endpoint starts with the events committed from now on.
            bounds = await self._store.event_bounds()
            await conn.execute(START, self._url, bounds.horizon - 1, EVENT_SEQ_AFTER_ALL)
            row = await conn.fetchrow(LOAD, self._url)
        cursor = EventCursor(row["delivered_position"], row["delivered_seq"])
        self._failing_since = row["failing_since"]
        signals = self._store.signals
        saved, saved_at = cursor, time.monotonic()
        while True:
            signal = signals.next_signal()
            try:
                page = await self._store.events(cursor, None, self._types, limits.EVENT_BATCH_MAX)
            except failures.EventCursorExpired:
                # Down for longer than the retention: what was deleted cannot be sent.
                oldest = (await self._store.event_bounds()).oldest
                log.error(
                    "webhook events lost to retention",
                    extra={"endpoint": self._label, "resumed_at": str(oldest)},
                )
                cursor = oldest
                await conn.execute(SAVE, self._url, cursor.position, cursor.seq, None)
                saved, saved_at = cursor, time.monotonic()
                continue
            if batch := page.events:
                await self._deliver_batch(conn, batch, cursor)
                self._failing_since = None
            cursor = page.read_through(cursor)
            if cursor != saved and (
                batch or time.monotonic() - saved_at >= IDLE_CURSOR_SAVE_INTERVAL_SECONDS
            ):
                await conn.execute(SAVE, self._url, cursor.position, cursor.seq, None)
                saved, saved_at = cursor, time.monotonic()
            if not batch:
                metrics.WEBHOOK_LAG_SECONDS.labels(self._label).set(0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(limits.EVENT_POLL_INTERVAL_SECONDS):
                        await signal.wait()

    async def _deliver_batch(
        self, conn: asyncpg.Connection, events: list[Event], before: EventCursor
    ) -> None:
        """Every event of the batch acknowledged or given up, each account's in order."""
        batch = _Batch(events, before)

        saved = [time.monotonic()]

        async def lane() -> None:
            while batch.waiting:
                for event in batch.waiting.pop():
                    await self._deliver_one(conn, event, batch)
                    batch.finished(event)
                    if time.monotonic() - saved[0] >= CURSOR_SAVE_INTERVAL_SECONDS:
                        saved[0] = time.monotonic()
                        await self._save(conn, batch.acknowledged)

        async with asyncio.TaskGroup() as lanes:
            for _ in range(min(DELIVERY_LANES, len(batch.waiting))):
                lanes.create_task(lane())

    async def _save(self, conn: asyncpg.Connection, cursor: EventCursor) -> None:
        """The cursor and failure state, from a lane (which share the connection)."""
        async with self._conn_lock:
            await conn.execute(SAVE, self._url, cursor.position, cursor.seq, self._failing_since)

    async def _deliver_one(self, conn: asyncpg.Connection, event: Event, batch: "_Batch") -> None:
        """POST until it is acknowledged or the retry window has passed."""
        body = event_body(event)
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            metrics.WEBHOOK_LAG_SECONDS.labels(self._label).set(batch.oldest_age_seconds())
            headers = {
                "Content-Type": "application/json",
                EVENT_ID_HEADER: str(event.event_id),
                SIGNATURE_HEADER: signature(body, self._secret, int(time.time())),
            }
            try:
                status = await loop.run_in_executor(
                    self._posters, _post, self._pool, self._url, body, headers
                )
            except urllib3.exceptions.HTTPError as exc:
                status, error = 0, type(exc).__name__
            else:
                error = f"HTTP {status}"
            if HTTP_OK_MIN <= status <= HTTP_OK_MAX:
                metrics.WEBHOOK_ATTEMPTS.labels(self._label, "delivered").inc()
                self._consecutive_failures = 0
                metrics.WEBHOOK_CONSECUTIVE_FAILURES.labels(self._label).set(0)
                metrics.WEBHOOK_DELIVERY_SECONDS.labels(self._label).observe(_age_seconds(event))
                if self._failing_since is not None:
                    # The endpoint is back: the next failure starts a window of its own.
                    self._failing_since = None
                    await self._save(conn, batch.acknowledged)
                return
            metrics.WEBHOOK_ATTEMPTS.labels(self._label, "failed").inc()
            self._consecutive_failures += 1
            metrics.WEBHOOK_CONSECUTIVE_FAILURES.labels(self._label).set(self._consecutive_failures)
            now = datetime.datetime.now(datetime.UTC)
            if self._failing_since is None:
                self._failing_since = now
                await self._save(conn, batch.acknowledged)
            if now - self._failing_since > self._retry:
                metrics.WEBHOOK_GIVEN_UP.labels(self._label).inc()
                log.error(
                    "webhook given up",
                    extra={"event_id": str(event.event_id), "endpoint": self._label},
                )
                return
            failures += 1
            wait = backoff_seconds(failures)
            log.warning(
                "webhook failed",
                extra={"event_id": str(event.event_id), "error": error, "retry_in_s": wait},
            )
            await self._wait_out(wait, batch)

    async def _wait_out(self, seconds: float, batch: "_Batch") -> None:
        """A backoff, with the lag kept current meanwhile (a backoff lasts up to
        BACKOFF_MAX_SECONDS: the lag alert must not wait for the next attempt)."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(left, LAG_REFRESH_SECONDS))
            metrics.WEBHOOK_LAG_SECONDS.labels(self._label).set(batch.oldest_age_seconds())


class _Batch:
    """A batch in flight: the accounts' queues still waiting for a lane, and its oldest
    event not yet acknowledged or given up (what the lag measures); every event before
    that one is done, so a restart may resume after the last of them."""

    def __init__(self, events: list[Event], before: EventCursor) -> None:
        self._before = before
        self._events = events
        self._done: set[uuid.UUID] = set()
        self._head = 0
        queues: dict[str, list[Event]] = {}
        for event in events:
            # Price events ("" account) keep their order among themselves too.
            queues.setdefault(event.account_id, []).append(event)
        self.waiting = list(reversed(queues.values()))

    def finished(self, event: Event) -> None:
        self._done.add(event.event_id)
        while self._head < len(self._events) and self._events[self._head].event_id in self._done:
            self._head += 1

    @property
    def acknowledged(self) -> EventCursor:
        """The cursor after which nothing is left undone."""
        return self._events[self._head - 1].cursor if self._head else self._before

    def oldest_age_seconds(self) -> float:
        return _age_seconds(self._events[self._head]) if self._head < len(self._events) else 0.0


def _age_seconds(event: Event) -> float:
    """From the event's commit (its occurred_at, the ledger's clock) to now."""
    return max(0.0, (datetime.datetime.now(datetime.UTC) - event.occurred_at).total_seconds())
