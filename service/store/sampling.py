"""Metrics only the database can tell, sampled in the background: the events written to
the outbox (`credits_events_written_total`), which the ledger's SQL functions write
inside their transactions, out of any process's sight."""

import asyncio
import logging
from typing import Protocol

from service.ops import metrics

log = logging.getLogger("credits.sampling")

# A rate over a few minutes barely notices a count this late, and each read is one
# sequence lookup.
EVENTS_WRITTEN_SAMPLE_INTERVAL_SECONDS = 10.0


class EventCount(Protocol):
    """What the sampler reads: PostgresStore, or a test's stand-in."""

    async def events_written(self) -> int: ...


class EventsWrittenSampler:
    """Adds to credits_events_written_total what the outbox's sequence moved since the
    last sample. The first sample is the starting point: the counter counts from when
    this process started sampling, as a counter does from its process's start."""

    def __init__(self, store: EventCount) -> None:
        self._store = store
        self._previous: int | None = None

    async def sample(self) -> None:
        written = await self._store.events_written()
        # A sequence that went back (a database restored from an older backup) is a new
        # starting point, never a negative count.
        if self._previous is not None and written > self._previous:
            metrics.EVENTS_WRITTEN.inc(written - self._previous)
        self._previous = written

    async def run(self, interval_seconds: float = EVENTS_WRITTEN_SAMPLE_INTERVAL_SECONDS) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:
                # The next sample catches up: the sequence keeps what was written meanwhile.
                log.warning("sampling events written failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(interval_seconds)
