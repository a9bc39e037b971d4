"""The asynchronous client: one typed method per RPC, each call with a deadline and
retried (same request, same idempotency key) while the failure says "not now"."""

import asyncio
import datetime
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import message as protobuf_message

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_client.channel import read_pem, secure_channel
from credits_client.errors import CreditsError, from_rpc_error
from credits_client.hold import Hold
from credits_client.results import (
    Account,
    Balance,
    EntryKind,
    Event,
    EventType,
    Extended,
    Grant,
    Granted,
    GrantLot,
    GrantSource,
    JobTypeUsage,
    LedgerEntry,
    Price,
    Reservation,
    ReservationDetails,
    Reserved,
    Revocation,
    Transfer,
    event_type_message,
    kind_message,
    source_message,
)
from credits_client.retry import RetryPolicy

API_KEY_HEADER = "x-api-key"
# Each attempt's deadline unless a call names its own; the service's Confirm and Reserve
# answer in milliseconds, so this is time for a slow network or a busy account.
CALL_TIMEOUT_SECONDS_DEFAULT = 5.0
# In-flight calls get this long to finish when the client closes its channel.
CLOSE_GRACE_SECONDS = 5.0

log = logging.getLogger("credits_client")

FilePath = str | PathLike[str]


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def _aware(moment: datetime.datetime, name: str) -> datetime.datetime:
    # A naive datetime would be read as UTC by protobuf: a silent error of hours.
    if moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment


class CreditsClient:
    """The credits service, from asyncio code.

    `target` is the service's address (`host:port`); `ca_file` the CA that signed the
    service's certificate (None: the system's roots). mTLS callers give `cert_file` and
    `key_file`; TLS callers give `api_key`. `target` may instead be an open
    `grpc.aio.Channel`, which the client uses and leaves open.

    The channel opens on the first call, in the running event loop: use one client per
    event loop. `async with client:` (or `await client.close()`) closes it.
    """

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        /,
        *,
        ca_file: FilePath | None = None,
        cert_file: FilePath | None = None,
        key_file: FilePath | None = None,
        api_key: str | None = None,
        server_name: str | None = None,
        timeout_seconds: float = CALL_TIMEOUT_SECONDS_DEFAULT,
        retry: RetryPolicy | None = None,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._timeout_seconds = timeout_seconds
        self._retry = retry or RetryPolicy()
        self._metadata = ((API_KEY_HEADER, api_key),) if api_key else ()
        self._given_channel: grpc.aio.Channel | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        if not isinstance(target, str):
            if ca_file or cert_file or key_file or server_name:
                raise ValueError("an open channel brings its own TLS settings")
            self._given_channel = target
            return
        ca_pem = read_pem(ca_file) if ca_file else None
        cert_pem = read_pem(cert_file) if cert_file else None
        key_pem = read_pem(key_file) if key_file else None
        if (cert_pem is None) != (key_pem is None):
            raise ValueError("cert_file and key_file go together")
        self._target, self._server_name = target, server_name
        self._pems = (ca_pem, cert_pem, key_pem)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel the client opened (a given channel stays open). A later
        call opens a new one."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None and channel is not self._given_channel:
            await channel.close(CLOSE_GRACE_SECONDS)

    def _stub_now(self) -> Any:
        if self._stub is None:
            if self._given_channel is not None:
                self._channel = self._given_channel
            else:
                ca_pem, cert_pem, key_pem = self._pems
                self._channel = secure_channel(
                    self._target,
                    ca_pem=ca_pem,
                    cert_pem=cert_pem,
                    key_pem=key_pem,
                    server_name=self._server_name,
                )
            self._stub = credits_pb2_grpc.CreditsServiceStub(self._channel)
        return self._stub

    async def _call(
        self,
        rpc: str,
        request: protobuf_message.Message,
        timeout_seconds: float | None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Sends `request` until it succeeds, fails for good, or the retry budget ends;
        every attempt sends the very same request (and so the same key)."""
        send = getattr(self._stub_now(), rpc)
        attempt_seconds = self._timeout_seconds if timeout_seconds is None else timeout_seconds
        started, attempts = time.monotonic(), 0
        while True:
            attempts += 1
            remaining = self._retry.budget_seconds - (time.monotonic() - started)
            try:
                return await send(
                    request, timeout=min(attempt_seconds, remaining), metadata=self._metadata
                )
            except grpc.aio.AioRpcError as rpc_error:
                error = from_rpc_error(
                    rpc_error, idempotency_key=idempotency_key, attempts=attempts
                )
                cause = rpc_error
            remaining = self._retry.budget_seconds - (time.monotonic() - started)
            wait_seconds = self._retry.wait_seconds(error, remaining)
            if wait_seconds is None:
                raise error from cause
            self._log_retry(rpc, request, error, wait_seconds)
            await asyncio.sleep(wait_seconds)

    @staticmethod
    def _log_retry(
        rpc: str, request: protobuf_message.Message, error: CreditsError, wait_seconds: float
    ) -> None:
        # The ids go into the message itself, so that a plain logging.basicConfig shows
        # them; the same values are record attributes for structured handlers.
        fields: dict[str, str | int] = {
            name: getattr(request, name)
            for name in ("account_id", "reservation_id", "grant_id", "external_ref")
            if getattr(request, name, "")
        }
        if error.idempotency_key:
            fields["idempotency_key"] = error.idempotency_key
        ids = " ".join(f"{name}={value}" for name, value in fields.items())
        log.info(
            "credits call retried: %s attempt %d failed (%s %s), next in %.2f s; %s",
            rpc,
            error.attempts,
            error.code.name,
            error.reason or "no reason",
            wait_seconds,
            ids,
            extra=fields
            | {
                "rpc": rpc,
                "attempt": error.attempts,
                "code": error.code.name,
                "reason": error.reason,
            },
        )

    async def reserve(
        self,
        account_id: str,
        amount: int | None = None,
        *,
        quantity: int | None = None,
        idempotency_key: str | None = None,
        ttl: datetime.timedelta | None = None,
        job_id: str = "",
        job_type: str = "",
        description: str = "",
        metadata: Mapping[str, str] | None = None,
        timeout_seconds: float | None = None,
    ) -> Reserved:
        """Holds `amount` credits for a job (all or nothing), or, instead of an amount,
        `quantity` units of `job_type` at the price in effect (the reservation records
        the price version); `ttl` (1 s to 24 h, the service's default 15 min when None)
        until it expires unless confirmed."""
        if (amount is None) == (quantity is None):
            raise ValueError("give exactly one of amount and quantity")
        key = idempotency_key or new_idempotency_key()
        request = pb.ReserveRequest(
            account_id=account_id,
            amount=amount or 0,
            quantity=quantity or 0,
            idempotency_key=key,
            job_id=job_id,
            job_type=job_type,
            description=description,
            metadata=dict(metadata or {}),
        )
        if ttl is not None:
            request.ttl.FromTimedelta(ttl)
        response = await self._call("Reserve", request, timeout_seconds, key)
        reservation = Reservation.from_message(response.reservation)
        return Reserved(**vars(reservation), idempotency_key=key)

    async def confirm(
        self,
        account_id: str,
        reservation_id: str,
        amount: int | None = None,
        *,
        allow_overrun: bool = False,
        quantity: int | None = None,
        timeout_seconds: float | None = None,
    ) -> Reservation:
        """Captures `amount` of the reservation (all when both are None), or, for a
        priced reservation, `quantity` units at the unit price it was reserved at; the
        rest goes back. With `allow_overrun`, the amount (or quantity) may exceed the
        reservation: the extra comes from the available credits, then as debt up to the
        account's overdraft limit (InsufficientCredits beyond it, SpendLimitExceeded or
        AccountFrozen before it; then nothing changed and the reservation is still
        active)."""
        if amount is not None and quantity is not None:
            raise ValueError("give at most one of amount and quantity")
        request = pb.ConfirmRequest(
            account_id=account_id, reservation_id=reservation_id, allow_overrun=allow_overrun
        )
        if amount is not None:
            request.amount = amount
        if quantity is not None:
            request.quantity = quantity
        response = await self._call("Confirm", request, timeout_seconds)
        return Reservation.from_message(response.reservation)

    async def release(
        self,
        account_id: str,
        reservation_id: str,
        reason: str = "",
        *,
        timeout_seconds: float | None = None,
    ) -> Reservation:
        """Gives the reservation's credits back; `reason` is for operators."""
        request = pb.ReleaseRequest(
            account_id=account_id, reservation_id=reservation_id, reason=reason
        )
        response = await self._call("Release", request, timeout_seconds)
        return Reservation.from_message(response.reservation)

    async def grant(
        self,
        account_id: str,
        amount: int,
        *,
        source: GrantSource | str,
        idempotency_key: str | None = None,
        expires_at: datetime.datetime | None = None,
        priority: int = 0,
        external_ref: str | None = None,
        description: str = "",
        metadata: Mapping[str, str] | None = None,
        timeout_seconds: float | None = None,
    ) -> Granted:
        """Adds `amount` credits; `source` is "purchase", "signup_bonus", "promotion" or
        "adjustment" (or a GrantSource); `expires_at` must be timezone-aware."""
        key = idempotency_key or new_idempotency_key()
        request = pb.GrantRequest(
            account_id=account_id,
            amount=amount,
            source=source_message(source),
            idempotency_key=key,
            external_ref=external_ref or "",
            description=description,
            metadata=dict(metadata or {}),
            priority=priority,
        )
        if expires_at is not None:
            request.expires_at.FromDatetime(_aware(expires_at, "expires_at"))
        response = await self._call("Grant", request, timeout_seconds, key)
        return Granted(
            **vars(Grant.from_message(response.grant)),
            idempotency_key=key,
            replayed=response.replayed,
        )

    async def revoke(
        self,
        account_id: str = "",
        *,
        grant_id: str | None = None,
        external_ref: str | None = None,
        amount: int = 0,
        idempotency_key: str | None = None,
        reason: str = "",
        cumulative_series: str = "",
        withdraw: bool = False,
        as_of: datetime.datetime | None = None,
        timeout_seconds: float | None = None,
    ) -> Revocation:
        """Claims `amount` (0: everything) of one grant, named by `grant_id` or by
        `external_ref` (then `account_id` may be empty). See the contract's
        RevokeRequest for `cumulative_series`, `withdraw` and `as_of` (timezone-aware: the
        time of the fact the claim states; the series' latest then stands, and its
        `amount` 0 claims nothing)."""
        if (grant_id is None) == (external_ref is None):
            raise ValueError("name the grant by exactly one of grant_id and external_ref")
        key = idempotency_key or new_idempotency_key()
        request = pb.RevokeRequest(
            account_id=account_id,
            amount=amount,
            idempotency_key=key,
            reason=reason,
            cumulative_series=cumulative_series,
            withdraw=withdraw,
        )
        if as_of is not None:
            request.as_of.FromDatetime(_aware(as_of, "as_of"))
        if grant_id is not None:
            request.grant_id = grant_id
        else:
            request.external_ref = external_ref or ""
        response = await self._call("Revoke", request, timeout_seconds, key)
        return Revocation.from_message(response, key)

    async def transfer(
        self,
        from_account_id: str,
        to_account_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        description: str = "",
        timeout_seconds: float | None = None,
    ) -> Transfer:
        """Moves `amount` available credits from one account to another, all or nothing:
        they leave the source in burn-down order and arrive as "transfer" grants that keep
        each lot's expiry and priority. A repeat with the same `idempotency_key` returns
        the original transfer."""
        key = idempotency_key or new_idempotency_key()
        request = pb.TransferRequest(
            from_account_id=from_account_id,
            to_account_id=to_account_id,
            amount=amount,
            idempotency_key=key,
            description=description,
        )
        response = await self._call("Transfer", request, timeout_seconds, key)
        return Transfer.from_message(response.transfer, key)

    async def balance(self, account_id: str, *, timeout_seconds: float | None = None) -> Balance:
        request = pb.GetBalanceRequest(account_id=account_id)
        return Balance.from_message(await self._call("GetBalance", request, timeout_seconds))

    async def _pages(
        self, rpc: str, request: Any, items: str, timeout_seconds: float | None
    ) -> AsyncIterator[Any]:
        """The items of every page, each page fetched when the iteration reaches it."""
        while True:
            page = await self._call(rpc, request, timeout_seconds)
            for item in getattr(page, items):
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def usage(
        self, account_id: str, *, page_size: int = 0, timeout_seconds: float | None = None
    ) -> AsyncIterator[Reservation]:
        """Every reservation of the account, newest first (`page_size` 1-100 per page
        fetched, 0: the service's default)."""
        request = pb.ListUsageRequest(account_id=account_id, page_size=page_size)
        async for message in self._pages("ListUsage", request, "reservations", timeout_seconds):
            yield Reservation.from_message(message)

    async def list_grants(
        self,
        account_id: str,
        *,
        include_finished: bool = False,
        page_size: int = 0,
        timeout_seconds: float | None = None,
    ) -> AsyncIterator[GrantLot]:
        """The account's grants in burn-down order: those with credits remaining or
        held, or every one with `include_finished`."""
        request = pb.ListGrantsRequest(
            account_id=account_id, page_size=page_size, include_finished=include_finished
        )
        async for message in self._pages("ListGrants", request, "grants", timeout_seconds):
            yield GrantLot.from_message(message)

    async def list_entries(
        self,
        account_id: str,
        *,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
        kinds: Iterable[EntryKind | str] = (),
        page_size: int = 0,
        timeout_seconds: float | None = None,
    ) -> AsyncIterator[LedgerEntry]:
        """The account's statement, newest first: entries made in [since, until) of
        the given kinds (every kind when none), each with the balance after it."""
        request = pb.ListEntriesRequest(
            account_id=account_id,
            page_size=page_size,
            kinds=[kind_message(kind) for kind in kinds],
        )
        if since is not None:
            request.since.FromDatetime(_aware(since, "since"))
        if until is not None:
            request.until.FromDatetime(_aware(until, "until"))
        async for message in self._pages("ListEntries", request, "entries", timeout_seconds):
            yield LedgerEntry.from_message(message)

    async def get_reservation(
        self, account_id: str, reservation_id: str, *, timeout_seconds: float | None = None
    ) -> ReservationDetails:
        request = pb.GetReservationRequest(account_id=account_id, reservation_id=reservation_id)
        response = await self._call("GetReservation", request, timeout_seconds)
        return ReservationDetails.from_message(response)

    async def extend_reservation(
        self,
        account_id: str,
        reservation_id: str,
        ttl: datetime.timedelta,
        *,
        timeout_seconds: float | None = None,
    ) -> Extended:
        """Moves an active reservation's expiry to now + `ttl` (1 s to 24 h), at most to
        its `extendable_until`."""
        request = pb.ExtendReservationRequest(account_id=account_id, reservation_id=reservation_id)
        request.ttl.FromTimedelta(ttl)
        response = await self._call("ExtendReservation", request, timeout_seconds)
        return Extended.from_message(response)

    async def get_account(
        self, account_id: str, *, timeout_seconds: float | None = None
    ) -> Account:
        """The account's settings (the defaults when nobody has set any)."""
        request = pb.GetAccountRequest(account_id=account_id)
        response = await self._call("GetAccount", request, timeout_seconds)
        return Account.from_message(response.account)

    async def get_usage_summary(
        self,
        since: datetime.datetime,
        until: datetime.datetime,
        *,
        account_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> list[JobTypeUsage]:
        """Per job type, the reservations that finished in [since, until) (at most 31
        days), every account's or `account_id`'s: counts by outcome, credits captured and
        the success rate in thousandths; most finished first."""
        request = pb.GetUsageSummaryRequest(account_id=account_id or "")
        request.since.FromDatetime(_aware(since, "since"))
        request.until.FromDatetime(_aware(until, "until"))
        response = await self._call("GetUsageSummary", request, timeout_seconds)
        return [JobTypeUsage.from_message(message) for message in response.job_types]

    async def update_account_settings(
        self,
        account_id: str,
        *,
        frozen: bool | None = None,
        overdraft_limit: int | None = None,
        spend_limit_day: int | None = None,
        spend_limit_month: int | None = None,
        spend_limit_rolling: int | None = None,
        spend_limit_rolling_hours: int | None = None,
        balance_alert_thresholds: Sequence[int] | None = None,
        default_balance_alert_thresholds: bool = False,
        reason: str = "",
        timeout_seconds: float | None = None,
    ) -> Account:
        """Changes the settings given (None leaves a setting as it is), audited with
        `reason`. Setting a value again changes nothing, so a retry is harmless. A limit
        of 0 means none; a rolling limit needs its window (`spend_limit_rolling_hours`)
        in the same call. `balance_alert_thresholds` sets the account's own thresholds
        (empty: none); `default_balance_alert_thresholds=True` returns it to the
        service-wide default."""
        if balance_alert_thresholds is not None and default_balance_alert_thresholds:
            raise ValueError("give balance_alert_thresholds or the default, not both")
        changes: dict[str, bool | int | None] = {
            "frozen": frozen,
            "overdraft_limit": overdraft_limit,
            "spend_limit_day": spend_limit_day,
            "spend_limit_month": spend_limit_month,
            "spend_limit_rolling": spend_limit_rolling,
            "spend_limit_rolling_hours": spend_limit_rolling_hours,
        }
        request = pb.UpdateAccountSettingsRequest(account_id=account_id, reason=reason)
        for name, value in changes.items():
            if value is not None:
                setattr(request.settings, name, value)
                request.update_mask.paths.append(name)
        if balance_alert_thresholds is not None:
            request.settings.balance_alert_thresholds.SetInParent()
            request.settings.balance_alert_thresholds.thresholds.extend(balance_alert_thresholds)
        if balance_alert_thresholds is not None or default_balance_alert_thresholds:
            request.update_mask.paths.append("balance_alert_thresholds")
        response = await self._call("UpdateAccountSettings", request, timeout_seconds)
        return Account.from_message(response.account)

    async def set_price(
        self,
        job_type: str,
        unit_price: int = 0,
        *,
        unit: str = "",
        effective_at: datetime.datetime | None = None,
        reason: str = "",
        retire: bool = False,
        timeout_seconds: float | None = None,
    ) -> Price:
        """Appends a version of `job_type`'s price: `unit_price` credit units per `unit`,
        in effect from `effective_at` (timezone-aware, not in the past; None: now), or,
        with `retire`, no price from then on. Each call appends a version."""
        request = pb.SetPriceRequest(
            job_type=job_type, unit_price=unit_price, unit=unit, reason=reason, retire=retire
        )
        if effective_at is not None:
            request.effective_at.FromDatetime(_aware(effective_at, "effective_at"))
        response = await self._call("SetPrice", request, timeout_seconds)
        return Price.from_message(response.price)

    async def list_prices(
        self,
        *,
        at: datetime.datetime | None = None,
        page_size: int = 0,
        timeout_seconds: float | None = None,
    ) -> AsyncIterator[Price]:
        """The price in effect of every job type at `at` (timezone-aware; None: now), by
        job type; retired job types are left out."""
        request = pb.ListPricesRequest(page_size=page_size)
        if at is not None:
            request.at.FromDatetime(_aware(at, "at"))
        async for message in self._pages("ListPrices", request, "prices", timeout_seconds):
            yield Price.from_message(message)

    async def price_history(
        self, job_type: str, *, page_size: int = 0, timeout_seconds: float | None = None
    ) -> AsyncIterator[Price]:
        """Every version of `job_type`'s price, newest first, future ones included."""
        request = pb.ListPriceHistoryRequest(job_type=job_type, page_size=page_size)
        async for message in self._pages("ListPriceHistory", request, "prices", timeout_seconds):
            yield Price.from_message(message)

    async def _stream(self, rpc: str, request: Any) -> AsyncIterator[Any]:
        """The responses of a server stream: one call, no deadline (a stream lasts as
        long as its reader wants)."""
        call = getattr(self._stub_now(), rpc)(request, metadata=self._metadata)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def watch_events(
        self,
        *,
        after_cursor: str | None = None,
        from_oldest: bool = False,
        account_id: str = "",
        types: Iterable[EventType | str] = (),
    ) -> AsyncIterator[Event]:
        """Ledger events in commit order: after `after_cursor` (the cursor of the last
        event received), from the oldest retained (`from_oldest`), or else from now;
        stored ones first, then live ones, until the server stops (the iteration ends)
        or the caller stops iterating. Only `account_id`'s (empty: every account's),
        only of `types` (empty: every type). When the connection fails in a way the
        retry policy retries, the stream resumes after the last event it yielded: each
        event comes once. A cursor older than the service's retention raises
        EventCursorExpired."""
        if after_cursor is not None and from_oldest:
            raise ValueError("give after_cursor or from_oldest, not both")
        request = pb.WatchEventsRequest(
            account_id=account_id, types=[event_type_message(t) for t in types]
        )
        if after_cursor is not None:
            request.after_cursor = after_cursor
        elif from_oldest:
            request.from_oldest = True
        else:
            request.from_now = True
        started, attempts = time.monotonic(), 0
        while True:
            attempts += 1
            try:
                async for response in self._stream("WatchEvents", request):
                    event = Event.from_message(response.event)
                    request.after_cursor = event.cursor
                    started, attempts = time.monotonic(), 0
                    yield event
                return
            except grpc.aio.AioRpcError as rpc_error:
                error = from_rpc_error(rpc_error, idempotency_key=None, attempts=attempts)
                cause = rpc_error
            remaining = self._retry.budget_seconds - (time.monotonic() - started)
            wait_seconds = self._retry.wait_seconds(error, remaining)
            if wait_seconds is None:
                raise error from cause
            self._log_retry("WatchEvents", request, error, wait_seconds)
            await asyncio.sleep(wait_seconds)

    def hold(
        self,
        account_id: str,
        amount: int | None = None,
        *,
        quantity: int | None = None,
        ttl: datetime.timedelta | None = None,
        job_id: str = "",
        job_type: str = "",
        description: str = "",
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        keepalive: bool = False,
        timeout_seconds: float | None = None,
    ) -> Hold:
        """`async with client.hold(...) as hold:` reserves on entry; on a normal exit
        confirms what `hold.capture()` named (everything if it was never called), on an
        exception or cancellation releases and re-raises. `idempotency_key` names one
        attempt: the key of an attempt that already ended raises JobAlreadySettled on
        entry, before the body runs. With `keepalive`, the reservation is extended by
        its ttl every third of it while the work runs, up to its lifetime cap. See Hold
        and docs/client.md. A priced hold gives `job_type` and `quantity` instead of
        `amount`, and may name its final quantity with `hold.capture_quantity(n)`."""
        if (amount is None) == (quantity is None):
            raise ValueError("give exactly one of amount and quantity")
        reserve = functools.partial(
            self.reserve,
            account_id,
            amount,
            quantity=quantity,
            idempotency_key=idempotency_key,
            ttl=ttl,
            job_id=job_id,
            job_type=job_type,
            description=description,
            metadata=metadata,
            timeout_seconds=timeout_seconds,
        )
        return Hold(self, reserve, keepalive=keepalive, timeout_seconds=timeout_seconds)
