"""`hold()`: reserve, do the work, then confirm what it used -- or give everything back
when the work fails or is cancelled. The one way out that leaves credits held is a
failure of the Release itself; the reservation then expires at its `expires_at`."""

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from credits_client.errors import CreditsError, ReservationLifetimeExceeded, ReservationNotActive
from credits_client.results import Reservation, Reserved

if TYPE_CHECKING:
    from credits_client.client import CreditsClient

# The service refuses a Release reason longer than this.
RELEASE_REASON_CHARS_MAX = 500
NOTHING_CAPTURED_REASON = "nothing captured"
# With keepalive, the reservation is extended by its ttl each time this fraction of the
# ttl has passed: two extensions in a row can fail before it expires.
KEEPALIVE_INTERVAL_TTL_FRACTION = 1 / 3

log = logging.getLogger("credits_client.hold")
# Releases that go on after their hold was cancelled once more: the event loop keeps
# only weak references to tasks.
_releases_in_background: set["asyncio.Future[Reservation]"] = set()


def release_reason(error: BaseException) -> str:
    """Names what ended the work: "cancelled: CancelledError", "failed: ValueError"."""
    kind = "cancelled" if isinstance(error, asyncio.CancelledError) else "failed"
    return f"{kind}: {type(error).__qualname__}"[:RELEASE_REASON_CHARS_MAX]


class Hold:
    """A reservation held for the work inside `async with client.hold(...) as hold:`.

    On a normal exit it confirms `hold.capture(n)`'s amount, or the whole reservation
    when capture was never called (capture(0) releases instead). On any exception or
    cancellation it releases with a reason naming the exception's type, then lets the
    exception go on; if that Release fails, the failure is logged and the original
    exception still goes on. A failed Confirm raises (the reservation then still expires
    at `expires_at`, giving the credits back).

    With `keepalive`, a background task extends the reservation by its ttl every third
    of it (ExtendReservation) until the work ends or the reservation's lifetime cap is
    reached; `expires_at` follows. A failed extension is logged and tried again.
    """

    def __init__(
        self,
        client: "CreditsClient",
        reserve: Callable[[], Awaitable[Reserved]],
        *,
        keepalive: bool,
        timeout_seconds: float | None,
    ) -> None:
        self._client = client
        self._reserve = reserve
        self._keepalive = keepalive
        self._keeper: asyncio.Task[None] | None = None
        self._timeout_seconds = timeout_seconds
        self._reservation: Reserved | None = None
        self._expires_at: datetime.datetime | None = None
        self._captured: int | None = None
        # The reservation as confirmed or released on exit; None until then, and after
        # a Release that failed.
        self.settled: Reservation | None = None

    @property
    def reservation(self) -> Reserved:
        if self._reservation is None:
            raise RuntimeError("the hold has no reservation before it is entered")
        return self._reservation

    @property
    def reservation_id(self) -> str:
        return self.reservation.reservation_id

    @property
    def expires_at(self) -> datetime.datetime:
        """When the reservation expires unless confirmed (later after each extension)."""
        return self._expires_at or self.reservation.expires_at

    @property
    def idempotency_key(self) -> str:
        return self.reservation.idempotency_key

    def capture(self, amount: int) -> None:
        """Confirm `amount` (at most the reserved amount) on a normal exit, instead of
        everything; the rest goes back. The last call counts."""
        if not 0 <= amount <= self.reservation.amount:
            raise ValueError(f"capture must be between 0 and {self.reservation.amount}")
        self._captured = amount

    async def __aenter__(self) -> Self:
        self._reservation = await self._reserve()
        if self._keepalive:
            self._keeper = asyncio.create_task(self._keep_alive())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.wait([self._keeper])
        if exc is None:
            await self._settle()
        else:
            await self._release_after(exc)

    async def _settle(self) -> None:
        reservation = self.reservation
        if self._captured == 0:
            self.settled = await self._client.release(
                reservation.account_id,
                reservation.reservation_id,
                NOTHING_CAPTURED_REASON,
                timeout_seconds=self._timeout_seconds,
            )
            return
        self.settled = await self._client.confirm(
            reservation.account_id,
            reservation.reservation_id,
            self._captured,
            timeout_seconds=self._timeout_seconds,
        )

    async def _keep_alive(self) -> None:
        reservation = self.reservation
        ttl = reservation.expires_at - reservation.created_at
        while True:
            await asyncio.sleep(ttl.total_seconds() * KEEPALIVE_INTERVAL_TTL_FRACTION)
            try:
                extended = await self._client.extend_reservation(
                    reservation.account_id,
                    reservation.reservation_id,
                    ttl,
                    timeout_seconds=self._timeout_seconds,
                )
            except (ReservationLifetimeExceeded, ReservationNotActive) as error:
                self._log_extension(error, "reservation not extended any further")
                return
            except CreditsError as error:
                self._log_extension(error, "reservation not extended; trying again")
                continue
            self._expires_at = extended.reservation.expires_at

    def _log_extension(self, error: CreditsError, message: str) -> None:
        fields = {
            "reservation_id": self.reservation.reservation_id,
            "expires_at": self.expires_at.isoformat(),
            "error": type(error).__name__,
        }
        log.warning(message, extra=fields)

    async def _release_after(self, error: BaseException) -> None:
        reservation = self.reservation
        # Shielded: a second cancellation while releasing must not abandon the Release.
        release = asyncio.ensure_future(
            self._client.release(
                reservation.account_id,
                reservation.reservation_id,
                release_reason(error),
                timeout_seconds=self._timeout_seconds,
            )
        )
        try:
            self.settled = await asyncio.shield(release)
        except asyncio.CancelledError:
            _releases_in_background.add(release)
            release.add_done_callback(_releases_in_background.discard)
            release.add_done_callback(self._log_background_release)
            raise
        except Exception as release_error:
            self._log_failed_release(release_error)

    def _log_background_release(self, release: "asyncio.Future[Reservation]") -> None:
        if not release.cancelled() and release.exception() is not None:
            self._log_failed_release(release.exception())

    def _log_failed_release(self, release_error: BaseException | None) -> None:
        fields = {
            "account_id": self.reservation.account_id,
            "reservation_id": self.reservation.reservation_id,
            "expires_at": self.expires_at.isoformat(),
            "error": type(release_error).__name__,
        }
        log.warning(
            "release failed; the reservation expires at expires_at",
            extra=fields,
            exc_info=release_error,
        )
