"""`hold()`: reserve, do the work, then confirm what it used -- or give everything back
when the work fails or is cancelled. The one way out that leaves credits held is a
failure of the Release itself; the reservation then expires at its `expires_at`.

The work never runs without an active reservation: a Reserve replayed with the key of a
finished attempt answers that attempt's settled reservation, and the hold refuses it
(`JobAlreadySettled`) before the body runs."""

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from credits_client.errors import (
    CreditsError,
    JobAlreadySettled,
    ReservationLifetimeExceeded,
    ReservationNotActive,
)
from credits_client.results import Reservation, ReservationStatus, Reserved

if TYPE_CHECKING:
    from credits_client.client import CreditsClient

# The service refuses a Release reason longer than this.
RELEASE_REASON_CHARS_MAX = 500
NOTHING_CAPTURED_REASON = "nothing captured"
# With keepalive, the reservation is extended by its ttl each time this fraction of the
# ttl has passed: two extensions in a row can fail before it expires.
KEEPALIVE_INTERVAL_TTL_FRACTION = 1 / 3
# The service's shortest ttl (limits.RESERVATION_TTL_MIN): no extension can be shorter.
EXTENSION_TTL_MIN_SECONDS = 1.0
# Once a full extension would pass `extendable_until`, the last one asks to end this long
# before it: the client's reading of the service's clock lags it by about one answer's
# network latency, and an extension past the cap is refused whole.
FINAL_EXTENSION_MARGIN_SECONDS = 1.0
# The last extension is done when it ends this close to its target, and a search for
# the longest ttl the service grants stops when it knows the answer this precisely.
FINAL_EXTENSION_PRECISION_SECONDS = 0.25
# Asks for the last extension, at most: halving 24 h down to the precision takes 19.
FINAL_EXTENSION_ASKS_MAX = 24

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

    On entry it reserves; if the Reserve answers a reservation that is not active (its
    idempotency key names an attempt that already confirmed, released or expired, or
    its `expires_at` has passed), it raises `JobAlreadySettled` and the body never runs.

    On a normal exit it confirms `hold.capture(n)`'s amount, or the whole reservation
    when capture was never called (capture(0) releases instead). On any exception or
    cancellation it releases with a reason naming the exception's type, then lets the
    exception go on; if that Release fails, the failure is logged and the original
    exception still goes on. A failed Confirm raises (the reservation then still expires
    at `expires_at`, giving the credits back). `settled` is the reservation as it ended.

    With `keepalive`, a background task extends the reservation by its ttl every third
    of it (ExtendReservation); `expires_at` follows. When a full extension would pass the
    reservation's `extendable_until` (the service's lifetime cap), it makes one last,
    shorter extension up to just before it, then stops. A failed extension is logged
    and tried again.
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
        self._extendable_until: datetime.datetime | None = None
        # The service's time at a moment of this process's monotonic clock: the latest
        # answer that says what time the service had.
        self._service_clock: tuple[datetime.datetime, float] | None = None
        self._captured: int | None = None
        self._allow_overrun = False
        self._captured_quantity: int | None = None
        # The reservation as it ended: confirmed or released on exit, or, when entry
        # was refused with JobAlreadySettled, the settled one the Reserve answered.
        # None until then, and after a Release that failed.
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

    def capture(self, amount: int, *, allow_overrun: bool = False) -> None:
        """Confirm `amount` on a normal exit, instead of everything; the rest goes back.
        At most the reserved amount, unless `allow_overrun`: then the final cost may be
        more, the extra taken as confirm(..., allow_overrun=True) takes it. A refused
        overrun raises on exit and leaves the reservation active: confirm what may be
        taken with client.confirm(hold.reservation_id, ...), or it expires. The last call
        counts."""
        if amount < 0 or (amount > self.reservation.amount and not allow_overrun):
            raise ValueError(f"capture must be between 0 and {self.reservation.amount}")
        self._captured, self._captured_quantity = amount, None
        self._allow_overrun = allow_overrun

    def capture_quantity(self, quantity: int, *, allow_overrun: bool = False) -> None:
        """For a priced hold: confirm `quantity` units at the unit price the reservation
        was priced at, on a normal exit, instead of everything; 0 releases. At most the
        reserved quantity, unless `allow_overrun`: then the extra units are an overrun at
        the same price. The last call of this or `capture` counts."""
        if not self.reservation.quantity:
            raise ValueError("capture_quantity needs a hold priced by quantity")
        if quantity < 0 or (quantity > self.reservation.quantity and not allow_overrun):
            raise ValueError(f"quantity must be between 0 and {self.reservation.quantity}")
        self._captured, self._captured_quantity = None, quantity
        self._allow_overrun = allow_overrun

    async def __aenter__(self) -> Self:
        reservation = await self._reserve()
        self._refuse_unless_active(reservation)
        self._reservation = reservation
        self._service_clock = (reservation.created_at, time.monotonic())
        if self._keepalive:
            self._keeper = asyncio.create_task(self._keep_alive())
        return self

    def _refuse_unless_active(self, reservation: Reserved) -> None:
        status = reservation.status
        # This machine's clock: a reservation the service has not yet marked expired
        # still cannot be confirmed once its expires_at has passed.
        now = datetime.datetime.now(datetime.UTC)
        if status is ReservationStatus.RESERVED and reservation.expires_at <= now:
            status = ReservationStatus.EXPIRED
        if status is not ReservationStatus.RESERVED:
            self.settled = reservation
            raise JobAlreadySettled(reservation, status)

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
        if self._captured == 0 or self._captured_quantity == 0:
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
            allow_overrun=self._allow_overrun,
            quantity=self._captured_quantity,
            timeout_seconds=self._timeout_seconds,
        )

    async def _keep_alive(self) -> None:
        reservation = self.reservation
        ttl = reservation.expires_at - reservation.created_at
        while True:
            await asyncio.sleep(ttl.total_seconds() * KEEPALIVE_INTERVAL_TTL_FRACTION)
            try:
                await self._extend(ttl)
            except ReservationLifetimeExceeded:
                await self._extend_to_the_cap(ttl)
                return
            except ReservationNotActive as error:
                self._log_extension(error, "not extended any further")
                return
            except CreditsError as error:
                self._log_extension(error, "not extended; trying again")

    async def _extend(self, ttl: datetime.timedelta) -> None:
        reservation = self.reservation
        extended = await self._client.extend_reservation(
            reservation.account_id,
            reservation.reservation_id,
            ttl,
            timeout_seconds=self._timeout_seconds,
        )
        self._expires_at = extended.reservation.expires_at
        self._extendable_until = extended.extendable_until
        # The service set expires_at to its now + ttl.
        self._service_clock = (self._expires_at - ttl, time.monotonic())

    def _service_now(self) -> datetime.datetime:
        if self._service_clock is None:
            raise RuntimeError("the hold has no reservation before it is entered")
        seen, at = self._service_clock
        return seen + datetime.timedelta(seconds=time.monotonic() - at)

    async def _extend_to_the_cap(self, refused: datetime.timedelta) -> None:
        """The service refused a full extension (it would pass `extendable_until`): one
        last, shorter one up to just before the cap, then no more.

        It asks for what the reading of the service's clock says is left. Should the
        service refuse that too (the reading ran behind, e.g. a replayed reservation),
        it halves the gap between the longest ttl granted and the shortest refused;
        after each extension granted, the reading is exact again. A refusal changes
        nothing, so a wrong guess costs one call."""
        try:
            cap = self._extendable_until or await self._extendable_until_from_service()
            target = cap - datetime.timedelta(seconds=FINAL_EXTENSION_MARGIN_SECONDS)
            precision = datetime.timedelta(seconds=FINAL_EXTENSION_PRECISION_SECONDS)
            granted, trust_reading = datetime.timedelta(), True
            for _ in range(FINAL_EXTENSION_ASKS_MAX):
                left = target - self._service_now()
                if self.expires_at >= target - precision or refused - granted < precision:
                    break
                ask = (
                    left if trust_reading and granted < left < refused else (granted + refused) / 2
                )
                if ask.total_seconds() < EXTENSION_TTL_MIN_SECONDS:
                    break
                try:
                    await self._extend(ask)
                    granted, trust_reading = ask, True
                except ReservationLifetimeExceeded:
                    refused, trust_reading = ask, False
        except CreditsError as error:
            self._log_extension(error, "not extended up to its lifetime cap")
            return
        self._log_extension(
            None, f"not extended any further: it is at its lifetime cap ({cap.isoformat()})"
        )

    async def _extendable_until_from_service(self) -> datetime.datetime:
        reservation = self.reservation
        details = await self._client.get_reservation(
            reservation.account_id,
            reservation.reservation_id,
            timeout_seconds=self._timeout_seconds,
        )
        return details.extendable_until

    def _describe(self) -> str:
        """The ids of this hold, for log messages (readable under any log format)."""
        reservation = self.reservation
        return (
            f"reservation {reservation.reservation_id} of account {reservation.account_id} "
            f"(idempotency key {reservation.idempotency_key}, expires at "
            f"{self.expires_at.isoformat()})"
        )

    def _fields(self, error: BaseException | None) -> dict[str, str]:
        reservation = self.reservation
        fields = {
            "account_id": reservation.account_id,
            "reservation_id": reservation.reservation_id,
            "idempotency_key": reservation.idempotency_key,
            "expires_at": self.expires_at.isoformat(),
        }
        if error is not None:
            fields["error"] = type(error).__name__
        return fields

    def _log_extension(self, error: CreditsError | None, outcome: str) -> None:
        if error is None:
            log.info("keepalive: %s %s", self._describe(), outcome, extra=self._fields(None))
            return
        log.warning(
            "keepalive: %s %s: %s",
            self._describe(),
            outcome,
            error,
            extra=self._fields(error),
        )

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
        log.warning(
            "release of %s failed (%s): the credits come back when it expires",
            self._describe(),
            type(release_error).__name__,
            extra=self._fields(release_error),
            exc_info=release_error,
        )
