"""The ledger's clock in production: this instance's clock plus its offset to
PostgreSQL's, the one clock every instance shares (docs/architecture.md, "Time").

The offset is measured with `SELECT clock_timestamp()`: PostgreSQL read its clock at some
moment between sending the query and receiving the answer, so the middle of that round
trip is off by at most half of it. Of a few samples the one with the shortest round trip
is kept; one whose half round trip exceeds the configured error is discarded, and the
last good offset stays. Until a first offset is measured the clock refuses (UNAVAILABLE),
so that no instance decides an expiry by its own clock alone.
"""

import asyncio
import datetime
import logging

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ledger import failures
from service.ledger.operations import Clock, utc_now

log = logging.getLogger("credits.clock")

# Round trips measured per offset: the shortest of them bounds the error best.
SAMPLES_PER_MEASUREMENT = 5
# How soon a clock that has no offset yet (the database was down) tries again.
UNSYNCED_RETRY_SECONDS = 1.0
DATABASE_NOW = text("SELECT clock_timestamp()")


def skewed(skew_seconds: float) -> Clock:
    """This machine's clock, moved by `skew_seconds` (a test's stand-in for a machine
    whose clock is wrong)."""
    if skew_seconds == 0:
        return utc_now
    skew = datetime.timedelta(seconds=skew_seconds)
    return lambda: utc_now() + skew


class DatabaseClock:
    """`local()` plus the last measured offset to PostgreSQL's clock."""

    def __init__(self, error_max_seconds: float, local: Clock = utc_now) -> None:
        self._error_max = datetime.timedelta(seconds=error_max_seconds)
        self.local = local
        self._offset: datetime.timedelta | None = None

    def __call__(self) -> datetime.datetime:
        if self._offset is None:
            raise failures.StoreUnavailable()
        return self.local() + self._offset

    async def measure(self, engine: AsyncEngine) -> bool:
        """Measure the offset anew; False (the last offset kept) if the database cannot
        be reached or answers too slowly for the configured error."""
        best: tuple[datetime.timedelta, datetime.timedelta] | None = None
        try:
            async with engine.connect() as conn:
                for _ in range(SAMPLES_PER_MEASUREMENT):
                    sent = self.local()
                    database_now = await conn.scalar(DATABASE_NOW)
                    received = self.local()
                    round_trip = received - sent
                    if database_now is None or round_trip < datetime.timedelta():
                        continue  # this machine's clock stepped back during the sample
                    offset = database_now - (sent + round_trip / 2)
                    if best is None or round_trip < best[0]:
                        best = (round_trip, offset)
        # SQLAlchemyError: the database's errors, and also a pool with no connection
        # free in time, which would otherwise end the task that keeps the offset fresh.
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("cannot measure the database clock", extra={"error": type(exc).__name__})
            return False
        if best is None or best[0] / 2 > self._error_max:
            log.warning(
                "database clock measurement discarded",
                extra={"round_trip_seconds": None if best is None else best[0].total_seconds()},
            )
            return False
        if self._offset is None:
            log.info("database clock measured", extra={"offset_seconds": best[1].total_seconds()})
        self._offset = best[1]
        return True

    async def run(self, engine: AsyncEngine, interval_seconds: float) -> None:
        """Measure every `interval_seconds`, and sooner while there is no offset yet."""
        while True:
            unsynced = self._offset is None
            await asyncio.sleep(
                min(interval_seconds, UNSYNCED_RETRY_SECONDS) if unsynced else interval_seconds
            )
            await self.measure(engine)
