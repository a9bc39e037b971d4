"""The ledger's entry points: one per RPC, each validates its command, reads the one
clock, and makes one store call. Standard library only.

The rules themselves (burn-down order, allocation, expiry, revocation claims) must hold
atomically under one account lock, so they live in the database's functions
(service/store/sql/ledger.sql); this module decides what may be asked of them, and
service/ledger/failures.py lists every answer a caller can get.
"""

import asyncio
import contextlib
import datetime
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from typing import Protocol, TypeVar

from service.ledger import limits, paging
from service.ledger.commands import (
    AccountQuery,
    BalanceQuery,
    ConfirmCommand,
    EntriesQuery,
    ExtendCommand,
    GrantCommand,
    GrantsQuery,
    PriceHistoryQuery,
    PricesQuery,
    ReleaseCommand,
    ReservationQuery,
    ReserveCommand,
    RevokeCommand,
    SetPriceCommand,
    TransferCommand,
    UpdateAccountSettingsCommand,
    UsageQuery,
    UsageSummaryQuery,
    WatchEventsQuery,
)
from service.ledger.model import (
    ACCOUNT_SETTINGS_FIELDS,
    GRANTABLE_SOURCES,
    LISTABLE_KINDS,
    WATCHABLE_TYPES,
    Account,
    AccountSettings,
    Allocation,
    Balance,
    EntryKind,
    EntryPage,
    Event,
    EventCursor,
    EventType,
    Extension,
    Granted,
    GrantLot,
    GrantPage,
    JobTypeUsage,
    LedgerEntry,
    Price,
    PricePage,
    Reservation,
    ReservationDetail,
    Revocation,
    Transfer,
    UsagePage,
)
from service.ledger.validation import Check, clamp_page_size, request_hash

Clock = Callable[[], datetime.datetime]
# What each list's page tokens are bound to, besides the account.
USAGE_LIST = "usage"
GRANTS_LIST = "grants"
ENTRIES_LIST = "entries"
PRICES_LIST = "prices"
PRICE_HISTORY_LIST = "price_history"
# Price lists are global: their page tokens are bound to this instead of an account.
PRICE_LIST_SCOPE = ""
Item = TypeVar("Item")
# What a bad page_token violation says, whatever was wrong with the token.
NOT_A_PAGE_OF_THIS_LIST = "is not a token from a previous page of this list"
# When the caller stops waiting, as a moment of time.monotonic(); None: it set no deadline.
# The store derives its lock and statement timeouts from it.
Deadline = float | None


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Policy:
    """The configured limits the rules depend on."""

    amount_max: int
    metadata_keys: frozenset[str]
    # How long after its creation a reservation may be extended to at most.
    reservation_lifetime_max: datetime.timedelta


@dataclass(frozen=True)
class ReserveOrder:
    """A validated Reserve, as the store carries it out."""

    command: ReserveCommand
    ttl: datetime.timedelta
    request_hash: bytes
    # What a Reserve by quantity may come to at most (the policy's amount_max).
    amount_max: int


@dataclass(frozen=True)
class PriceOrder:
    """A validated SetPrice: unit_price None retires the job type."""

    caller: str
    job_type: str
    unit_price: int | None
    unit: str
    effective_at: datetime.datetime
    reason: str


@dataclass(frozen=True)
class GrantOrder:
    command: GrantCommand
    expires_at: datetime.datetime | None
    request_hash: bytes


@dataclass(frozen=True)
class RevokeOrder:
    command: RevokeCommand
    grant_id: uuid.UUID | None
    as_of: datetime.datetime | None
    request_hash: bytes


@dataclass(frozen=True)
class TransferOrder:
    command: TransferCommand
    request_hash: bytes


@dataclass(frozen=True)
class UsageCursor:
    """Where a page of ListUsage ended: newest first, by creation time then id."""

    created_at: datetime.datetime
    reservation_id: uuid.UUID


@dataclass(frozen=True)
class SettingsOrder:
    """A validated UpdateAccountSettings: the fields `update_mask` names take their values
    from `settings`; the others keep theirs."""

    caller: str
    account_id: str
    settings: AccountSettings
    update_mask: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class EntryFilter:
    """Which entries of an account's statement a page lists; None means no filter."""

    since: datetime.datetime | None
    until: datetime.datetime | None
    kinds: frozenset[EntryKind] | None


# The wire form of an event cursor (model.EventCursor).
EVENT_CURSOR_PATTERN = re.compile(r"^([0-9]{1,19})-([0-9]{1,19})$")
# Both parts of an event cursor are BIGINTs.
EVENT_CURSOR_PART_MAX = 2**63 - 1
# Beyond every real sequence number: a cursor at a position with this seq is after all of
# the position's events.
EVENT_SEQ_AFTER_ALL = EVENT_CURSOR_PART_MAX


@dataclass(frozen=True)
class EventBounds:
    """Where the stream stands: every event that can still commit is at or after
    `horizon`; the retention sweep deleted everything up to `oldest` (inclusive)."""

    horizon: int
    oldest: EventCursor


@dataclass(frozen=True)
class EventPage:
    """One read of the stream: its events, all below `horizon` (the oldest transaction
    still running when it was read); `full` when the read stopped at its limit, so that
    more may follow at once."""

    events: list[Event]
    horizon: int
    full: bool

    def read_through(self, after: EventCursor) -> EventCursor:
        """Where the next read after this one, which started after `after`, starts. A full
        page: after its last event. Otherwise every event the read's filters select below
        the horizon is in it, and every event that can still commit is at or above the
        horizon, so the next read starts there: past the events the filters skipped, so
        that a filtered stream's read costs what committed since its last read (not
        everything since its last match), and the retention sweep deleting skipped
        events never ends a stream that is up to date."""
        last = self.events[-1].cursor if self.events else after
        if self.full:
            return last
        return max(last, EventCursor(self.horizon - 1, EVENT_SEQ_AFTER_ALL))


class EventSignals(Protocol):
    """Wakes WatchEvents streams when events commit (the store listens for them)."""

    def next_signal(self) -> asyncio.Event:
        """An event set at the next commit of events after this call, or on closing."""

    @property
    def closing(self) -> bool:
        """The server is stopping: streams end."""


class Store(Protocol):
    """What the ledger needs from storage. Each call is one transaction on one account,
    at the time `now` of the ledger's clock."""

    async def reserve(
        self, order: ReserveOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Reservation: ...

    async def confirm(
        self,
        account_id: str,
        reservation_id: uuid.UUID,
        amount: int | None,
        now: datetime.datetime,
        *,
        allow_overrun: bool,
        quantity: int | None,
        deadline: Deadline,
    ) -> Reservation: ...

    async def release(
        self,
        account_id: str,
        reservation_id: uuid.UUID,
        reason: str,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> Reservation: ...

    async def grant(
        self, order: GrantOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Granted: ...

    async def revoke(
        self, order: RevokeOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Revocation: ...

    async def transfer(
        self, order: TransferOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Transfer:
        """One transaction on two accounts: both locked, the lower account id first."""
        ...

    async def balance(
        self, account_id: str, now: datetime.datetime, *, deadline: Deadline
    ) -> Balance: ...

    async def usage(
        self,
        account_id: str,
        limit: int,
        after: UsageCursor | None,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> list[Reservation]: ...

    async def grants(
        self,
        account_id: str,
        include_finished: bool,
        limit: int,
        after: uuid.UUID | None,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> list[GrantLot]: ...

    async def entries(
        self,
        account_id: str,
        which: EntryFilter,
        limit: int,
        after: int | None,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> list[LedgerEntry]: ...

    async def reservation(
        self,
        account_id: str,
        reservation_id: uuid.UUID,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> tuple[Reservation, tuple[Allocation, ...]]: ...

    async def extend(
        self,
        account_id: str,
        reservation_id: uuid.UUID,
        ttl: datetime.timedelta,
        lifetime_max: datetime.timedelta,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> Reservation: ...

    async def account(
        self, account_id: str, now: datetime.datetime, *, deadline: Deadline
    ) -> Account: ...

    async def events(
        self,
        after: EventCursor,
        account_id: str | None,
        types: frozenset[EventType] | None,
        limit: int,
    ) -> EventPage: ...

    async def event_bounds(self) -> EventBounds: ...

    async def update_account_settings(
        self, order: SettingsOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Account: ...

    # The price tables are global: these take no account lock.
    async def set_price(
        self, order: PriceOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Price: ...

    async def prices(
        self, at: datetime.datetime, limit: int, after: int | None, *, deadline: Deadline
    ) -> list[Price]: ...

    async def price_history(
        self, job_type: str, limit: int, after: int | None, *, deadline: Deadline
    ) -> list[Price]: ...

    async def usage_summary(
        self,
        account_id: str | None,
        since: datetime.datetime,
        until: datetime.datetime,
        limit: int,
        *,
        deadline: Deadline,
    ) -> list[JobTypeUsage]:
        """A read of finished reservations only: it takes no account lock (a
        reservation's outcome never changes once it finished)."""
        ...


class Ledger:
    """The domain entry points: one per RPC, each validates, then makes one store call."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        clock: Clock = utc_now,
        signals: EventSignals | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        # Without signals, streams read every EVENT_POLL_INTERVAL_SECONDS.
        self._signals = signals or _Unsignalled()

    async def watch_events(self, query: WatchEventsQuery) -> AsyncIterator[Event]:
        """The events after the query's start, stored then live, until the server stops
        (or the caller goes). Validated before the stream starts."""
        check = Check()
        if query.account_id:
            check.account_id(query.account_id)
        if not set(query.types) <= WATCHABLE_TYPES:
            check.fail("types", "must name only known event types")
        after: EventCursor | None = None
        if query.after_cursor is not None:
            after = _event_cursor(query.after_cursor)
            if after is None:
                check.fail("after_cursor", "is not the cursor of an event")
        check.done()
        if after is None:
            bounds = await self._store.event_bounds()
            after = (
                bounds.oldest
                if query.from_oldest
                # Every event that can still commit is at the horizon or after it.
                else EventCursor(bounds.horizon - 1, EVENT_SEQ_AFTER_ALL)
            )
        types = frozenset(EventType(t) for t in query.types) or None
        return self._events_after(after, query.account_id or None, types)

    async def _events_after(
        self, after: EventCursor, account_id: str | None, types: frozenset[EventType] | None
    ) -> AsyncIterator[Event]:
        while not self._signals.closing:
            # Taken before reading: a commit during the read sets it, so none is missed.
            signal = self._signals.next_signal()
            read_at = time.monotonic()
            page = await self._store.events(after, account_id, types, limits.EVENT_BATCH_MAX)
            for event in page.events:
                yield event
            after = page.read_through(after)
            if page.full:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limits.EVENT_POLL_INTERVAL_SECONDS):
                    await signal.wait()
            # What commits meanwhile is read by the next read, which starts after it.
            await asyncio.sleep(read_at + limits.EVENT_READ_INTERVAL_MIN_SECONDS - time.monotonic())

    async def reserve(self, cmd: ReserveCommand, *, deadline: Deadline) -> Reservation:
        check = Check()
        check.account_id(cmd.account_id)
        if cmd.quantity:
            # Priced by the service: the amount is quantity * the price in effect.
            if cmd.amount:
                check.fail("amount", "must be 0 when quantity is given")
            check.amount(cmd.quantity, self._policy.amount_max, name="quantity")
            check.account_id(cmd.job_type, name="job_type")
        else:
            check.amount(cmd.amount, self._policy.amount_max)
            check.identifier("job_type", cmd.job_type, limits.JOB_FIELD_CHARS_MAX)
        check.idempotency_key(cmd.idempotency_key)
        check.identifier("job_id", cmd.job_id, limits.JOB_FIELD_CHARS_MAX)
        check.text("description", cmd.description, limits.DESCRIPTION_CHARS_MAX)
        check.metadata(cmd.metadata, self._policy.metadata_keys)
        ttl = check.ttl(cmd.ttl)
        check.done()
        # Over the request, never the computed amount: a replay after a price change is
        # the same request. Absent when not priced, so that keys stored before the field
        # existed still match.
        fields = {**asdict(cmd), "ttl": ttl.total_seconds(), "caller": None}
        if not cmd.quantity:
            del fields["quantity"]
        order = ReserveOrder(cmd, ttl, request_hash("reserve", fields), self._policy.amount_max)
        return await self._store.reserve(order, self._clock(), deadline=deadline)

    async def confirm(self, cmd: ConfirmCommand, *, deadline: Deadline) -> Reservation:
        check = Check()
        check.account_id(cmd.account_id)
        reservation_id = check.uuid("reservation_id", cmd.reservation_id)
        if cmd.amount is not None:
            check.amount(cmd.amount, self._policy.amount_max)
            if cmd.quantity is not None:
                check.fail("quantity", "must not be given with amount")
        elif cmd.quantity is not None:
            check.amount(cmd.quantity, self._policy.amount_max, name="quantity")
        check.done()
        if reservation_id is None:
            raise AssertionError("a request with a bad reservation_id passed validation")
        return await self._store.confirm(
            cmd.account_id,
            reservation_id,
            cmd.amount,
            self._clock(),
            allow_overrun=cmd.allow_overrun,
            quantity=cmd.quantity,
            deadline=deadline,
        )

    async def release(self, cmd: ReleaseCommand, *, deadline: Deadline) -> Reservation:
        check = Check()
        check.account_id(cmd.account_id)
        reservation_id = check.uuid("reservation_id", cmd.reservation_id)
        check.text("reason", cmd.reason, limits.REASON_CHARS_MAX)
        check.done()
        if reservation_id is None:
            raise AssertionError("a request with a bad reservation_id passed validation")
        return await self._store.release(
            cmd.account_id, reservation_id, cmd.reason, self._clock(), deadline=deadline
        )

    async def grant(self, cmd: GrantCommand, *, deadline: Deadline) -> Granted:
        check = Check()
        check.account_id(cmd.account_id)
        check.amount(cmd.amount, self._policy.amount_max)
        check.idempotency_key(cmd.idempotency_key)
        if cmd.source not in GRANTABLE_SOURCES:
            check.fail("source", "must be a known source other than UNSPECIFIED")
        check.printable("external_ref", cmd.external_ref, limits.EXTERNAL_REF_CHARS_MAX)
        # Whether it is in the future is decided by the store, after a replay of the
        # same request has been answered: time moves on, the request stays the same.
        expires_at = check.timestamp("expires_at", cmd.expires_at)
        check.text("description", cmd.description, limits.DESCRIPTION_CHARS_MAX)
        check.metadata(cmd.metadata, self._policy.metadata_keys)
        if not limits.PRIORITY_INT32_MIN <= cmd.priority <= limits.PRIORITY_INT32_MAX:
            check.fail("priority", "must be a 32-bit integer")
        check.done()
        fields = {**asdict(cmd), "expires_at": expires_at, "caller": None}
        order = GrantOrder(cmd, expires_at, request_hash("grant", fields))
        return await self._store.grant(order, self._clock(), deadline=deadline)

    async def revoke(self, cmd: RevokeCommand, *, deadline: Deadline) -> Revocation:
        check = Check()
        if cmd.account_id or not cmd.external_ref:
            check.account_id(cmd.account_id)
        check.idempotency_key(cmd.idempotency_key)
        grant_id = None
        if cmd.grant_id:
            grant_id = check.uuid("grant_id", cmd.grant_id)
        elif cmd.external_ref:
            check.printable("external_ref", cmd.external_ref, limits.EXTERNAL_REF_CHARS_MAX)
        else:
            check.fail("target", "grant_id or external_ref is required")
        if cmd.cumulative_series:
            check.printable(
                "cumulative_series", cmd.cumulative_series, limits.CUMULATIVE_SERIES_CHARS_MAX
            )
        elif cmd.withdraw:
            check.fail("cumulative_series", "is required to withdraw a series' claim")
        if cmd.withdraw and cmd.amount != 0:
            check.fail("amount", "must be 0 when withdrawing")
        elif not 0 <= cmd.amount <= self._policy.amount_max:
            check.fail("amount", f"must be between 0 (all) and {self._policy.amount_max}")
        as_of = check.timestamp("as_of", cmd.as_of)
        if cmd.as_of is not None and not cmd.cumulative_series:
            # Only a series has a claim that a later fact can replace.
            check.fail("as_of", "needs cumulative_series")
        check.text("reason", cmd.reason, limits.REASON_CHARS_MAX)
        check.done()
        fields = {**asdict(cmd), "as_of": as_of, "caller": None}
        if not cmd.withdraw:
            # Absent when false, so that keys stored before the field existed still match.
            del fields["withdraw"]
        if as_of is None:
            del fields["as_of"]  # the same, for keys stored before as_of existed
        order = RevokeOrder(cmd, grant_id, as_of, request_hash("revoke", fields))
        return await self._store.revoke(order, self._clock(), deadline=deadline)

    async def transfer(self, cmd: TransferCommand, *, deadline: Deadline) -> Transfer:
        check = Check()
        check.account_id(cmd.from_account_id, "from_account_id")
        check.account_id(cmd.to_account_id, "to_account_id")
        if cmd.from_account_id and cmd.from_account_id == cmd.to_account_id:
            check.fail("to_account_id", "must differ from from_account_id")
        check.amount(cmd.amount, self._policy.amount_max)
        check.idempotency_key(cmd.idempotency_key)
        check.text("description", cmd.description, limits.DESCRIPTION_CHARS_MAX)
        check.done()
        fields = {**asdict(cmd), "caller": None}
        order = TransferOrder(cmd, request_hash("transfer", fields))
        return await self._store.transfer(order, self._clock(), deadline=deadline)

    async def balance(self, query: BalanceQuery, *, deadline: Deadline) -> Balance:
        check = Check()
        check.account_id(query.account_id)
        check.done()
        return await self._store.balance(query.account_id, self._clock(), deadline=deadline)

    async def usage(self, query: UsageQuery, *, deadline: Deadline) -> UsagePage:
        check = Check()
        check.account_id(query.account_id)
        keys = _page_keys(check, query.page_token, USAGE_LIST, query.account_id, key_count=2)
        after = None
        if keys is not None:
            try:
                created, rid = keys
                after = UsageCursor(paging.parse_timestamp_key(created), paging.parse_uuid_key(rid))
            except paging.BadToken:
                check.fail("page_token", NOT_A_PAGE_OF_THIS_LIST)
        check.done()
        limit = clamp_page_size(query.page_size)
        # One more than the page tells whether another page follows.
        rows = await self._store.usage(
            query.account_id, limit + 1, after, self._clock(), deadline=deadline
        )
        page, token = _paged(rows, limit, USAGE_LIST, query.account_id, _usage_keys)
        return UsagePage(page, token)

    async def grants(self, query: GrantsQuery, *, deadline: Deadline) -> GrantPage:
        check = Check()
        check.account_id(query.account_id)
        keys = _page_keys(check, query.page_token, GRANTS_LIST, query.account_id, key_count=1)
        after = None
        if keys is not None:
            try:
                after = paging.parse_uuid_key(keys[0])
            except paging.BadToken:
                check.fail("page_token", NOT_A_PAGE_OF_THIS_LIST)
        check.done()
        limit = clamp_page_size(query.page_size)
        rows = await self._store.grants(
            query.account_id,
            query.include_finished,
            limit + 1,
            after,
            self._clock(),
            deadline=deadline,
        )
        page, token = _paged(rows, limit, GRANTS_LIST, query.account_id, _grant_keys)
        return GrantPage(page, token)

    async def entries(self, query: EntriesQuery, *, deadline: Deadline) -> EntryPage:
        check = Check()
        check.account_id(query.account_id)
        keys = _page_keys(check, query.page_token, ENTRIES_LIST, query.account_id, key_count=1)
        after = None
        if keys is not None:
            try:
                after = paging.parse_entry_id_key(keys[0])
            except paging.BadToken:
                check.fail("page_token", NOT_A_PAGE_OF_THIS_LIST)
        since = check.timestamp("since", query.since)
        until = check.timestamp("until", query.until)
        if since is not None and until is not None and until <= since:
            check.fail("until", "must be after since")
        if not set(query.kinds) <= LISTABLE_KINDS:
            check.fail("kinds", "must be known kinds other than UNSPECIFIED")
        check.done()
        kinds = frozenset(EntryKind(k) for k in query.kinds) or None
        limit = clamp_page_size(query.page_size)
        rows = await self._store.entries(
            query.account_id,
            EntryFilter(since, until, kinds),
            limit + 1,
            after,
            self._clock(),
            deadline=deadline,
        )
        page, token = _paged(rows, limit, ENTRIES_LIST, query.account_id, _entry_keys)
        return EntryPage(page, token)

    async def reservation(
        self, query: ReservationQuery, *, deadline: Deadline
    ) -> ReservationDetail:
        check = Check()
        check.account_id(query.account_id)
        reservation_id = check.uuid("reservation_id", query.reservation_id)
        check.done()
        if reservation_id is None:
            raise AssertionError("a request with a bad reservation_id passed validation")
        reservation, allocations = await self._store.reservation(
            query.account_id, reservation_id, self._clock(), deadline=deadline
        )
        return ReservationDetail(reservation, allocations, self._extendable_until(reservation))

    async def extend(self, cmd: ExtendCommand, *, deadline: Deadline) -> Extension:
        check = Check()
        check.account_id(cmd.account_id)
        reservation_id = check.uuid("reservation_id", cmd.reservation_id)
        if cmd.ttl is None:
            check.fail("ttl", "is required")
        ttl = check.ttl(cmd.ttl)
        check.done()
        if reservation_id is None:
            raise AssertionError("a request with a bad reservation_id passed validation")
        reservation = await self._store.extend(
            cmd.account_id,
            reservation_id,
            ttl,
            self._policy.reservation_lifetime_max,
            self._clock(),
            deadline=deadline,
        )
        return Extension(reservation, self._extendable_until(reservation))

    async def account(self, query: AccountQuery, *, deadline: Deadline) -> Account:
        check = Check()
        check.account_id(query.account_id)
        check.done()
        return await self._store.account(query.account_id, self._clock(), deadline=deadline)

    async def update_account_settings(
        self, cmd: UpdateAccountSettingsCommand, *, deadline: Deadline
    ) -> Account:
        check = Check()
        check.account_id(cmd.account_id)
        if not cmd.update_mask:
            check.fail("update_mask", "must name at least one setting")
        if not set(cmd.update_mask) <= set(ACCOUNT_SETTINGS_FIELDS):
            check.fail("update_mask", "must name only AccountSettings fields")
        check.text("reason", cmd.reason, limits.REASON_CHARS_MAX)
        _check_limits(check, cmd)
        thresholds = cmd.settings.balance_alert_thresholds
        if "balance_alert_thresholds" in cmd.update_mask and thresholds is not None:
            problem = limits.balance_alert_thresholds_problem(thresholds)
            if problem:
                check.fail("settings.balance_alert_thresholds.thresholds", problem)
        check.done()
        # The mask in the contract's order, once each: the audit trail records it as given.
        mask = tuple(f for f in ACCOUNT_SETTINGS_FIELDS if f in cmd.update_mask)
        settings = cmd.settings
        if thresholds is not None:
            # One spelling of a list: highest first.
            settings = replace(settings, balance_alert_thresholds=tuple(sorted(thresholds)[::-1]))
        order = SettingsOrder(cmd.caller, cmd.account_id, settings, mask, cmd.reason)
        return await self._store.update_account_settings(order, self._clock(), deadline=deadline)

    async def set_price(self, cmd: SetPriceCommand, *, deadline: Deadline) -> Price:
        check = Check()
        check.account_id(cmd.job_type, name="job_type")
        if cmd.retire:
            if cmd.unit_price:
                check.fail("unit_price", "must be 0 when retiring")
            if cmd.unit:
                check.fail("unit", "must be empty when retiring")
        else:
            check.amount(cmd.unit_price, self._policy.amount_max, name="unit_price")
            if not cmd.unit:
                check.fail("unit", "is required")
            else:
                check.identifier("unit", cmd.unit, limits.PRICE_UNIT_CHARS_MAX)
        effective_at = check.timestamp("effective_at", cmd.effective_at)
        check.text("reason", cmd.reason, limits.REASON_CHARS_MAX)
        check.done()
        now = self._clock()
        if effective_at is not None and effective_at < now:
            # From the one clock the store's rows are stamped with.
            check.fail("effective_at", "must not be in the past")
            check.done()
        order = PriceOrder(
            caller=cmd.caller,
            job_type=cmd.job_type,
            unit_price=None if cmd.retire else cmd.unit_price,
            unit=cmd.unit,
            effective_at=effective_at or now,
            reason=cmd.reason,
        )
        return await self._store.set_price(order, now, deadline=deadline)

    async def prices(self, query: PricesQuery, *, deadline: Deadline) -> PricePage:
        check = Check()
        at = check.timestamp("at", query.at)
        after = _version_key(check, query.page_token, PRICES_LIST, PRICE_LIST_SCOPE)
        check.done()
        limit = clamp_page_size(query.page_size)
        rows = await self._store.prices(at or self._clock(), limit + 1, after, deadline=deadline)
        page, token = _paged(rows, limit, PRICES_LIST, PRICE_LIST_SCOPE, _price_keys)
        return PricePage(page, token)

    async def price_history(self, query: PriceHistoryQuery, *, deadline: Deadline) -> PricePage:
        check = Check()
        check.account_id(query.job_type, name="job_type")
        after = _version_key(check, query.page_token, PRICE_HISTORY_LIST, query.job_type)
        check.done()
        limit = clamp_page_size(query.page_size)
        rows = await self._store.price_history(query.job_type, limit + 1, after, deadline=deadline)
        page, token = _paged(rows, limit, PRICE_HISTORY_LIST, query.job_type, _price_keys)
        return PricePage(page, token)

    async def usage_summary(
        self, query: UsageSummaryQuery, *, deadline: Deadline
    ) -> list[JobTypeUsage]:
        check = Check()
        if query.account_id:
            check.account_id(query.account_id)
        since = check.timestamp("since", query.since)
        until = check.timestamp("until", query.until)
        if query.since is None:
            check.fail("since", "is required")
        if query.until is None:
            check.fail("until", "is required")
        if since is not None and until is not None:
            if until <= since:
                check.fail("until", "must be after since")
            elif until - since > limits.USAGE_SUMMARY_WINDOW_MAX:
                check.fail(
                    "until",
                    f"must be at most {limits.USAGE_SUMMARY_WINDOW_MAX.days} days after since",
                )
        check.done()
        # check.done() raised if either is missing or bad.
        assert since is not None
        assert until is not None
        return await self._store.usage_summary(
            query.account_id or None,
            since,
            until,
            limits.USAGE_SUMMARY_JOB_TYPES_MAX,
            deadline=deadline,
        )

    def _extendable_until(self, reservation: Reservation) -> datetime.datetime:
        return reservation.created_at + self._policy.reservation_lifetime_max


def _event_cursor(text: str) -> EventCursor | None:
    match = EVENT_CURSOR_PATTERN.fullmatch(text)
    if match is None:
        return None
    position, seq = int(match[1]), int(match[2])
    if position > EVENT_CURSOR_PART_MAX or seq > EVENT_CURSOR_PART_MAX:
        return None
    return EventCursor(position, seq)


class _Unsignalled:
    """No notifications: streams wait out their poll interval."""

    closing = False

    def next_signal(self) -> asyncio.Event:
        return asyncio.Event()


def _page_keys(
    check: Check, token: str, kind: str, account_id: str, key_count: int
) -> list[str] | None:
    """The keys of a list's page token, checked right after the account id it is bound
    to: None for the first page or a bad account id (already a violation); a violation of
    its own for a token that is not this list's."""
    if not token or check.violations:
        return None
    try:
        return paging.decode(token, kind, account_id, key_count=key_count)
    except paging.BadToken:
        check.fail("page_token", NOT_A_PAGE_OF_THIS_LIST)
        return None


def _version_key(check: Check, token: str, kind: str, scope: str) -> int | None:
    """The price version a page of a price list ended at; None for the first page."""
    keys = _page_keys(check, token, kind, scope, key_count=1)
    if keys is None:
        return None
    try:
        return paging.parse_entry_id_key(keys[0])
    except paging.BadToken:
        check.fail("page_token", NOT_A_PAGE_OF_THIS_LIST)
        return None


def _paged(
    rows: list[Item], limit: int, kind: str, account_id: str, keys_of: Callable[[Item], list[str]]
) -> tuple[tuple[Item, ...], str]:
    """The page of `rows` (fetched one over `limit`: the extra row says another page
    follows) and the token of the next page, empty on the last one."""
    page = tuple(rows[:limit])
    if len(rows) <= limit:
        return page, ""
    return page, paging.encode(kind, account_id, keys_of(page[-1]))


def _usage_keys(r: Reservation) -> list[str]:
    return [paging.timestamp_key(r.created_at), str(r.reservation_id)]


def _grant_keys(lot: GrantLot) -> list[str]:
    # A grant's place in burn-down order never changes, so its id says where a page ended.
    return [str(lot.grant.grant_id)]


def _entry_keys(entry: LedgerEntry) -> list[str]:
    return [str(entry.entry_id)]


def _check_limits(check: Check, cmd: UpdateAccountSettingsCommand) -> None:
    """The overdraft and spend limits the mask names: amounts from 0 (none) to what an
    account may hold, and a rolling limit only with its window."""
    settings, mask = cmd.settings, set(cmd.update_mask)
    for name in ("overdraft_limit", "spend_limit_day", "spend_limit_month", "spend_limit_rolling"):
        value = getattr(settings, name)
        if name in mask and not 0 <= value <= limits.ACCOUNT_CREDITS_MAX:
            check.fail(name, "must be between 0 and the most an account may hold")
    hours = settings.spend_limit_rolling_hours
    if "spend_limit_rolling_hours" in mask:
        if not 0 <= hours <= limits.SPEND_WINDOW_HOURS_MAX:
            check.fail("spend_limit_rolling_hours", "must be between 0 and 744 (31 days)")
        elif hours == 0 and not (
            "spend_limit_rolling" in mask and settings.spend_limit_rolling == 0
        ):
            check.fail("spend_limit_rolling_hours", "0 only together with spend_limit_rolling 0")
    if (
        "spend_limit_rolling" in mask
        and settings.spend_limit_rolling > 0
        and not ("spend_limit_rolling_hours" in mask and hours > 0)
    ):
        check.fail("spend_limit_rolling", "needs spend_limit_rolling_hours in the same update")


def _price_keys(price: Price) -> list[str]:
    # A version's job type never changes (versions are append-only), so its number says
    # where a page of either price list ended.
    return [str(price.version)]
