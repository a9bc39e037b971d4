"""Wakes WatchEvents streams when events commit: one dedicated connection per process
LISTENs on the channel credits_emit notifies (docs/architecture.md, "Events"). A
notification only says "read again"; streams read from their own cursors, so a lost
notification costs at most one poll interval (limits.EVENT_POLL_INTERVAL_SECONDS), never
an event."""

import asyncio
import contextlib
import functools
import logging

import asyncpg

log = logging.getLogger("credits.events")

CHANNEL = "credits_events"
# After the listening connection fails, it is opened again this long after.
RECONNECT_DELAY_SECONDS = 1.0
# How long opening the listening connection may take.
CONNECT_TIMEOUT_SECONDS = 5.0


class EventListener:
    """The store's EventSignals (service.ledger.operations): the connection is opened by
    the first stream that waits, and kept open (reopened after a failure) until
    `aclose`, which also ends every stream."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._signal = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    def next_signal(self) -> asyncio.Event:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._listen())
        return self._signal

    def _wake(self, *_: object) -> None:
        # A new event for the waits that start after this; the old one wakes those before.
        signal, self._signal = self._signal, asyncio.Event()
        signal.set()

    async def _listen(self) -> None:
        while not self._closing:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_SECONDS)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("cannot listen for events", extra={"error": type(exc).__name__})
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                continue
            try:
                conn.add_termination_listener(functools.partial(_set_on_termination, lost))
                await conn.add_listener(CHANNEL, self._wake)
                # Whatever committed while nobody listened is read now.
                self._wake()
                await lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listening for events failed", extra={"error": type(exc).__name__})
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=CONNECT_TIMEOUT_SECONDS)
            await asyncio.sleep(RECONNECT_DELAY_SECONDS)

    async def aclose(self) -> None:
        """Stop listening and end every stream (the server is stopping)."""
        self._closing = True
        self._wake()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _set_on_termination(lost: asyncio.Event, _connection: object) -> None:
    lost.set()
