"""The ledger's entry points: one per RPC, each validates its command, reads the one
clock, and makes one store call. Standard library only.

The rules themselves (burn-down order, allocation, expiry, revocation claims) must hold
atomically under one account lock, so they live in the database's functions
(service/sql/ledger.sql); this module decides what may be asked of them, and
service/failures.py lists every answer a caller can get.
"""

import datetime
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from service import limits, paging
from service.commands import (
    BalanceQuery,
    ConfirmCommand,
    GrantCommand,
    ReleaseCommand,
    ReserveCommand,
    RevokeCommand,
    UsageQuery,
)
from service.model import GRANTABLE_SOURCES, Balance, Grant, Reservation, Revocation, UsagePage
from service.validation import Check, clamp_page_size, request_hash

Clock = Callable[[], datetime.datetime]
USAGE_LIST = "usage"


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Policy:
    """The configured limits the rules depend on."""

    amount_max: int
    metadata_keys: frozenset[str]


@dataclass(frozen=True)
class ReserveOrder:
    """A validated Reserve, as the store carries it out."""

    command: ReserveCommand
    ttl: datetime.timedelta
    request_hash: bytes


@dataclass(frozen=True)
class GrantOrder:
    command: GrantCommand
    expires_at: datetime.datetime | None
    request_hash: bytes


@dataclass(frozen=True)
class RevokeOrder:
    command: RevokeCommand
    grant_id: uuid.UUID | None
    request_hash: bytes


@dataclass(frozen=True)
class UsageCursor:
    """Where a page of ListUsage ended: newest first, by creation time then id."""

    created_at: datetime.datetime
    reservation_id: uuid.UUID


class Store(Protocol):
    """What the ledger needs from storage. Each call is one transaction on one account,
    at the time `now` of the ledger's clock."""

    async def reserve(self, order: ReserveOrder, now: datetime.datetime) -> Reservation: ...

    async def confirm(
        self, account_id: str, reservation_id: uuid.UUID, amount: int | None, now: datetime.datetime
    ) -> Reservation: ...

    async def release(
        self, account_id: str, reservation_id: uuid.UUID, reason: str, now: datetime.datetime
    ) -> Reservation: ...

    async def grant(self, order: GrantOrder, now: datetime.datetime) -> Grant: ...

    async def revoke(self, order: RevokeOrder, now: datetime.datetime) -> Revocation: ...

    async def balance(self, account_id: str, now: datetime.datetime) -> Balance: ...

    async def usage(
        self, account_id: str, limit: int, after: UsageCursor | None, now: datetime.datetime
    ) -> list[Reservation]: ...


class Ledger:
    """The domain entry points: one per RPC, each validates, then makes one store call."""

    def __init__(self, store: Store, policy: Policy, clock: Clock = utc_now) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock

    async def reserve(self, cmd: ReserveCommand) -> Reservation:
        check = Check()
        check.account_id(cmd.account_id)
        check.amount(cmd.amount, self._policy.amount_max)
        check.idempotency_key(cmd.idempotency_key)
        check.text("job_id", cmd.job_id, limits.JOB_FIELD_CHARS_MAX)
        check.text("job_type", cmd.job_type, limits.JOB_FIELD_CHARS_MAX)
        check.text("description", cmd.description, limits.DESCRIPTION_CHARS_MAX)
        check.metadata(cmd.metadata, self._policy.metadata_keys)
        ttl = check.ttl(cmd.ttl)
        check.done()
        fields = {**asdict(cmd), "ttl": ttl.total_seconds(), "caller": None}
        order = ReserveOrder(cmd, ttl, request_hash("reserve", fields))
        return await self._store.reserve(order, self._clock())

    async def confirm(self, cmd: ConfirmCommand) -> Reservation:
        check = Check()
        check.account_id(cmd.account_id)
        reservation_id = check.uuid("reservation_id", cmd.reservation_id)
        if cmd.amount is not None:
            check.amount(cmd.amount, self._policy.amount_max)
        check.done()
        if reservation_id is None:
            raise AssertionError("a request with a bad reservation_id passed validation")
        return await self._store.confirm(cmd.account_id, reservation_id, cmd.amount, self._clock())

    async def release(self, cmd: ReleaseCommand) -> Reservation:
        check = Check()
        check.account_id(cmd.account_id)
        reservation_id = check.uuid("reservation_id", cmd.reservation_id)
        check.text("reason", cmd.reason, limits.REASON_CHARS_MAX)
        check.done()
        if reservation_id is None:
            raise AssertionError("a request with a bad reservation_id passed validation")
        return await self._store.release(cmd.account_id, reservation_id, cmd.reason, self._clock())

    async def grant(self, cmd: GrantCommand) -> Grant:
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
        return await self._store.grant(order, self._clock())

    async def revoke(self, cmd: RevokeCommand) -> Revocation:
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
        check.text("reason", cmd.reason, limits.REASON_CHARS_MAX)
        check.done()
        fields = {**asdict(cmd), "caller": None}
        if not cmd.withdraw:
            # Absent when false, so that keys stored before the field existed still match.
            del fields["withdraw"]
        order = RevokeOrder(cmd, grant_id, request_hash("revoke", fields))
        return await self._store.revoke(order, self._clock())

    async def balance(self, query: BalanceQuery) -> Balance:
        check = Check()
        check.account_id(query.account_id)
        check.done()
        return await self._store.balance(query.account_id, self._clock())

    async def usage(self, query: UsageQuery) -> UsagePage:
        check = Check()
        check.account_id(query.account_id)
        after = None
        if query.page_token and not check.violations:
            try:
                created, rid = paging.decode(
                    query.page_token, USAGE_LIST, query.account_id, key_count=2
                )
                after = UsageCursor(paging.parse_timestamp_key(created), paging.parse_uuid_key(rid))
            except paging.BadToken:
                check.fail("page_token", "is not a token from a previous page of this list")
        check.done()
        limit = clamp_page_size(query.page_size)
        # One more than the page tells whether another page follows.
        rows = await self._store.usage(query.account_id, limit + 1, after, self._clock())
        page = tuple(rows[:limit])
        token = ""
        if len(rows) > limit:
            last = page[-1]
            token = paging.encode(
                USAGE_LIST,
                query.account_id,
                [paging.timestamp_key(last.created_at), str(last.reservation_id)],
            )
        return UsagePage(page, token)
