"""Wakes WatchEvents streams when events may have committed (docs/architecture.md,
"Events"). Each process keeps one dedicated connection that LISTENs on CHANNEL, and
NOTIFYs on it after its own ledger calls, at most once per NOTIFY_COALESCE_SECONDS; every
process's streams wake on every process's notifications.

The ledger's transactions do not NOTIFY themselves: PostgreSQL serializes the commits of
notifying transactions on one lock, which cost three quarters of the cycle's throughput.
A notification only says "read again": streams read from their own cursors, so a lost or
late notification costs at most one poll interval (limits.EVENT_POLL_INTERVAL_SECONDS),
never an event."""

import asyncio
import contextlib
import functools
import logging

import asyncpg

log = logging.getLogger("credits.events")

CHANNEL = "credits_events"
# At most one notification per this long per process: a busy process sends about a
# hundred a second however many calls it serves, and a stream waits no longer than this
# for the call that woke it.
NOTIFY_COALESCE_SECONDS = 0.01
# After the listening connection fails, it is opened again this long after.
RECONNECT_DELAY_SECONDS = 1.0
# How long opening the listening connection may take.
CONNECT_TIMEOUT_SECONDS = 5.0


class EventListener:
    """The store's EventSignals (service.ledger.operations): the connection is opened by
    the first stream that waits or the first call that may have written, and kept open
    (reopened after a failure) until `aclose`, which also ends every stream."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._signal = asyncio.Event()
        self._pending = asyncio.Event()
        self._closing = False
        self._connection: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def closing(self) -> bool:
        return self._closing

    def next_signal(self) -> asyncio.Event:
        self._start()
        return self._signal

    def changed(self) -> None:
        """A ledger call of this process ended: it may have committed events."""
        if not self._closing:
            self._start()
            self._pending.set()

    def _start(self) -> None:
        if not self._tasks and not self._closing:
            self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._pump())]

    def _wake(self, *_: object) -> None:
        # A new event for the waits that start after this; the old one wakes those before.
        signal, self._signal = self._signal, asyncio.Event()
        signal.set()

    async def _pump(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            connection = self._connection
            if connection is None:
                # Not listening (yet): this process's own streams at least.
                self._wake()
            else:
                try:
                    await connection.execute("SELECT pg_notify($1, '')", CHANNEL)
                except Exception as exc:
                    # Any failure: besides the database going down, a connection an
                    # error left half-answered refuses the next statement with asyncpg's
                    # InternalClientError, and a pump that stopped on it would never
                    # notify again. A notification is only a hint, so this process's
                    # streams are woken, and the connection is dropped: its termination
                    # makes _listen open a fresh one.
                    log.warning("cannot notify of events", extra={"error": type(exc).__name__})
                    connection.terminate()
                    self._wake()
            await asyncio.sleep(NOTIFY_COALESCE_SECONDS)

    async def _listen(self) -> None:
        while not self._closing:
            lost = asyncio.Event()
            # Like the pump, the listener outlives any failure of its connection (asyncpg
            # raises more than PostgresError and OSError): without it, streams fall back
            # to polling for as long as the process runs.
            try:
                conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_SECONDS)
            except Exception as exc:
                log.warning("cannot listen for events", extra={"error": type(exc).__name__})
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                continue
            try:
                conn.add_termination_listener(functools.partial(_set_on_termination, lost))
                await conn.add_listener(CHANNEL, self._wake)
                self._connection = conn
                # Whatever committed while nobody listened is read now.
                self._wake()
                await lost.wait()
            except Exception as exc:
                log.warning("listening for events failed", extra={"error": type(exc).__name__})
            finally:
                self._connection = None
                with contextlib.suppress(Exception):
                    await conn.close(timeout=CONNECT_TIMEOUT_SECONDS)
            await asyncio.sleep(RECONNECT_DELAY_SECONDS)

    async def aclose(self) -> None:
        """Stop listening and end every stream (the server is stopping)."""
        self._closing = True
        self._wake()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _set_on_termination(lost: asyncio.Event, _connection: object) -> None:
    lost.set()
