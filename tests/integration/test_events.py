"""WatchEvents through the real server (docs/contract.md "WatchEvents"): every ledger
change is one event, in commit order, resumable from its cursor exactly once; balance
alerts are decided in the change's own transaction."""

import asyncio
import contextlib
import datetime
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.app import policy
from service.ledger import limits
from service.ledger.commands import WatchEventsQuery
from service.ledger.model import Event
from service.ledger.operations import EventPage, Ledger, Store
from service.store.events import NOTIFY_COALESCE_SECONDS
from service.store.postgres import PostgresStore
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import (
    MovableClock,
    RunningServer,
    error_details,
    new_id,
    open_channel,
    start_server,
)

# How long a test waits for an event it expects, and for the absence of one it does not.
EVENT_WAIT_SECONDS = 10.0
QUIET_SECONDS = 1.5
# A stream opened "from now" has settled where it starts after this long.
STREAM_START_SECONDS = 0.5
# How long a stream is woken as often as the calls of a busy process wake it.
WOKEN_SECONDS = 1.0
E = pb.EventType


class Watch:
    """One WatchEvents stream, read into a queue by a task of its own (cancelling a read
    of a gRPC call would cancel the call)."""

    def __init__(self, stub: Stub, request: pb.WatchEventsRequest) -> None:
        self.call = stub.WatchEvents(request)
        self.queue: asyncio.Queue[pb.Event | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            await self.queue.put(response.event)
        await self.queue.put(None)

    async def next(self) -> pb.Event:
        event = await asyncio.wait_for(self.queue.get(), EVENT_WAIT_SECONDS)
        assert event is not None, "the stream ended"
        return event

    async def take(self, count: int) -> list[pb.Event]:
        return [await self.next() for _ in range(count)]

    async def quiet(self) -> None:
        """Nothing more arrives for QUIET_SECONDS."""
        try:
            extra = await asyncio.wait_for(self.queue.get(), QUIET_SECONDS)
        except TimeoutError:
            return
        pytest.fail(f"an unexpected event: {extra}")

    def close(self) -> None:
        self.call.cancel()
        self.task.cancel()


@contextlib.asynccontextmanager
async def watching(stub: Stub, **request: object) -> AsyncIterator[Watch]:
    watch = Watch(stub, pb.WatchEventsRequest(**request))  # type: ignore[arg-type]
    try:
        yield watch
    finally:
        watch.close()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await watch.task


async def _grant(stub: Stub, account: str, amount: int, **fields: object) -> pb.Grant:
    response: pb.GrantResponse = await stub.Grant(
        pb.GrantRequest(
            account_id=account,
            amount=amount,
            source=pb.GRANT_SOURCE_PURCHASE,
            idempotency_key=new_id("grant"),
            **fields,  # type: ignore[arg-type]
        ),
        timeout=T,
    )
    return response.grant


async def _reserve(stub: Stub, account: str, amount: int, ttl_seconds: int = 600) -> str:
    response: pb.ReserveResponse = await stub.Reserve(
        pb.ReserveRequest(
            account_id=account,
            amount=amount,
            idempotency_key=new_id("hold"),
            ttl=duration_pb2.Duration(seconds=ttl_seconds),
        ),
        timeout=T,
    )
    return response.reservation.reservation_id


async def _release(stub: Stub, account: str, reservation: str) -> None:
    await stub.Release(pb.ReleaseRequest(account_id=account, reservation_id=reservation), timeout=T)


async def _thresholds(stub: Stub, account: str, thresholds: list[int]) -> None:
    await stub.UpdateAccountSettings(
        pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(
                balance_alert_thresholds=pb.BalanceAlertThresholds(thresholds=thresholds)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["balance_alert_thresholds"]),
        ),
        timeout=T,
    )


async def test_a_stream_receives_grant_reserve_and_confirm_in_order(ops: Stub) -> None:
    account = new_id()
    async with watching(ops, from_oldest=True, account_id=account) as watch:
        grant = await _grant(ops, account, 100)
        reservation = await _reserve(ops, account, 30)
        await ops.Confirm(
            pb.ConfirmRequest(account_id=account, reservation_id=reservation, amount=20),
            timeout=T,
        )
        granted, reserved, confirmed = await watch.take(3)
    assert (granted.type, granted.grant_id, granted.amount) == (
        E.EVENT_TYPE_GRANTED,
        grant.grant_id,
        100,
    )
    assert granted.caller == "ops"
    assert granted.available_after == 100
    assert (reserved.type, reserved.reservation_id, reserved.amount) == (
        E.EVENT_TYPE_RESERVED,
        reservation,
        30,
    )
    assert reserved.available_after == 70
    assert (confirmed.type, confirmed.reservation_id) == (E.EVENT_TYPE_CONFIRMED, reservation)
    assert (confirmed.amount, confirmed.returned_amount, confirmed.available_after) == (20, 10, 80)
    assert confirmed.caller == ""  # Confirm has no idempotency key
    assert len({granted.event_id, reserved.event_id, confirmed.event_id}) == 3
    assert granted.occurred_at.seconds > 0


async def test_from_now_skips_what_committed_before(ops: Stub) -> None:
    account = new_id()
    await _grant(ops, account, 5)
    async with watching(ops, from_now=True, account_id=account) as watch:
        await watch.call.initial_metadata()
        await asyncio.sleep(STREAM_START_SECONDS)
        later = await _grant(ops, account, 7)
        event = await watch.next()
        assert event.grant_id == later.grant_id
        await watch.quiet()


async def test_a_release_is_an_event(ops: Stub) -> None:
    account = new_id()
    await _grant(ops, account, 50)
    reservation = await _reserve(ops, account, 20)
    await _release(ops, account, reservation)
    async with watching(ops, from_oldest=True, account_id=account) as watch:
        *_, released = await watch.take(3)
    assert (released.type, released.reservation_id, released.amount) == (
        E.EVENT_TYPE_RELEASED,
        reservation,
        20,
    )
    assert released.available_after == 50


async def test_expiries_are_events_when_settled(ops: Stub, clock: MovableClock) -> None:
    account = new_id()
    now = clock()
    expires = now + datetime.timedelta(seconds=120)
    stamp = pb.GrantRequest().expires_at
    stamp.FromDatetime(expires)
    grant = await _grant(ops, account, 40, expires_at=stamp)
    reservation = await _reserve(ops, account, 15, ttl_seconds=60)
    for _ in range(2):  # the reservation's expiry, then the grant's
        clock.advance(90)
        await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    async with watching(
        ops,
        from_oldest=True,
        account_id=account,
        types=[E.EVENT_TYPE_RESERVATION_EXPIRED, E.EVENT_TYPE_GRANT_EXPIRED],
    ) as watch:
        expired, lapsed = await watch.take(2)
        await watch.quiet()
    assert (expired.type, expired.reservation_id, expired.amount) == (
        E.EVENT_TYPE_RESERVATION_EXPIRED,
        reservation,
        15,
    )
    assert expired.available_after == 40
    assert (lapsed.type, lapsed.grant_id, lapsed.amount) == (
        E.EVENT_TYPE_GRANT_EXPIRED,
        grant.grant_id,
        40,
    )
    assert lapsed.available_after == 0


async def test_a_revocation_and_its_withdrawal_are_events(ops: Stub) -> None:
    account = new_id()
    grant = await _grant(ops, account, 100)
    await _reserve(ops, account, 70)

    async def revoke(amount: int, withdraw: bool) -> pb.RevokeResponse:
        response: pb.RevokeResponse = await ops.Revoke(
            pb.RevokeRequest(
                account_id=account,
                grant_id=grant.grant_id,
                amount=amount,
                cumulative_series="dispute-1",
                withdraw=withdraw,
                idempotency_key=new_id("revoke"),
            ),
            timeout=T,
        )
        return response

    await revoke(50, withdraw=False)
    await revoke(0, withdraw=True)
    async with watching(
        ops,
        from_oldest=True,
        account_id=account,
        types=[E.EVENT_TYPE_REVOKED, E.EVENT_TYPE_REVOCATION_WITHDRAWN],
    ) as watch:
        revoked, withdrawn = await watch.take(2)
    assert (revoked.type, revoked.grant_id, revoked.caller) == (
        E.EVENT_TYPE_REVOKED,
        grant.grant_id,
        "ops",
    )
    # 30 remained to take; the other 20 are owed.
    assert (revoked.amount, revoked.unrecovered_amount, revoked.available_after) == (30, 20, 0)
    assert revoked.revocation_id
    assert withdrawn.type == E.EVENT_TYPE_REVOCATION_WITHDRAWN
    assert (withdrawn.amount, withdrawn.unrecovered_amount, withdrawn.available_after) == (
        30,
        20,
        30,
    )


async def test_a_settings_change_is_an_event(ops: Stub) -> None:
    account = new_id()
    await ops.UpdateAccountSettings(
        pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(frozen=True),
            update_mask=field_mask_pb2.FieldMask(paths=["frozen"]),
        ),
        timeout=T,
    )
    async with watching(ops, from_oldest=True, account_id=account) as watch:
        (changed,) = await watch.take(1)
        await watch.quiet()
    assert (changed.type, changed.caller) == (E.EVENT_TYPE_ACCOUNT_SETTINGS_CHANGED, "ops")


async def test_resuming_after_a_cursor_gives_each_later_event_once(ops: Stub) -> None:
    account = new_id()
    for amount in (1, 2, 3, 4):
        await _grant(ops, account, amount)
    async with watching(ops, from_oldest=True, account_id=account) as first:
        events = await first.take(4)
    async with watching(ops, after_cursor=events[1].cursor, account_id=account) as resumed:
        again = await resumed.take(2)
        await _grant(ops, account, 5)
        live = await resumed.next()
        await resumed.quiet()
    assert [e.event_id for e in again] == [e.event_id for e in events[2:]]
    assert live.amount == 5


async def test_a_cursor_older_than_retention_is_out_of_range(
    ops: Stub, credits_server: RunningServer, clock: MovableClock
) -> None:
    account = new_id()
    await _grant(ops, account, 1)
    async with watching(ops, from_oldest=True, account_id=account) as watch:
        (old,) = await watch.take(1)
    await _grant(ops, account, 2)
    # Everything written so far is past retention.
    await credits_server.store.sweep_events(clock() + datetime.timedelta(days=1))
    async with watching(ops, after_cursor=old.cursor) as watch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await watch.task
    assert raised.value.code() is grpc.StatusCode.OUT_OF_RANGE
    assert error_details(raised.value)[0] == "EVENT_CURSOR_EXPIRED"
    # The oldest retained event is where a caller starts again.
    async with watching(ops, from_oldest=True, account_id=account) as watch:
        await _grant(ops, account, 3)
        assert (await watch.next()).amount == 3


async def test_a_filtered_stream_reads_on_past_the_events_it_skips(
    ops: Stub, credits_server: RunningServer, clock: MovableClock
) -> None:
    """A stream filtered by account and type reads on from where it has read, not from
    its last match: the retention sweep deleting the events it skipped leaves it running
    (it used to end OUT_OF_RANGE, and each of its reads went over every event since its
    last match)."""
    account = new_id()
    await _grant(ops, account, 100)
    await _thresholds(ops, account, [50])
    async with watching(ops, account_id=account, types=[E.EVENT_TYPE_BALANCE_LOW]) as watch:
        await asyncio.sleep(STREAM_START_SECONDS)
        await _grant(ops, account, 1)
        # The stream is woken by the grant's commit and reads past it.
        await asyncio.sleep(STREAM_START_SECONDS)
        await credits_server.store.sweep_events(clock() + datetime.timedelta(days=1))
        await _reserve(ops, account, 60)
        low = await watch.next()
        await watch.quiet()
    assert (low.type, low.account_id, low.threshold) == (E.EVENT_TYPE_BALANCE_LOW, account, 50)


async def test_a_bad_cursor_is_invalid(ops: Stub) -> None:
    async with watching(ops, after_cursor="not-a-cursor") as watch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await watch.task
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(raised.value)[1] == ["after_cursor"]


async def test_watching_needs_the_permission(
    backend: Stub, credits_server: RunningServer, pki: Path
) -> None:
    async with watching(backend, from_now=True) as watch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await watch.task
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    async with open_channel(pki, "events", credits_server.address) as channel:
        account = new_id()
        async with watching(Stub(channel), from_oldest=True, account_id=account) as watch:
            await watch.quiet()


async def test_a_stream_ends_cleanly_when_the_server_stops(database_url: str, pki: Path) -> None:
    server = await start_server(database_url, pki)
    try:
        async with open_channel(pki, "ops", server.address) as channel:
            watch = Watch(Stub(channel), pb.WatchEventsRequest(from_now=True))
            await watch.call.initial_metadata()
            await asyncio.sleep(STREAM_START_SECONDS)
            await server.stop()
            await asyncio.wait_for(watch.task, EVENT_WAIT_SECONDS)
            assert await watch.call.code() is grpc.StatusCode.OK
    finally:
        await server.stop()


async def _alerts(stub: Stub, account: str) -> Watch:
    return Watch(
        stub,
        pb.WatchEventsRequest(
            from_oldest=True,
            account_id=account,
            types=[
                E.EVENT_TYPE_BALANCE_LOW,
                E.EVENT_TYPE_BALANCE_DEPLETED,
                E.EVENT_TYPE_BALANCE_RECOVERED,
            ],
        ),
    )


async def _alerted_account(ops: Stub) -> str:
    """An account with thresholds 1000 and 100 holding 1500, past its first alerts."""
    account = new_id()
    await _thresholds(ops, account, [100, 1000])
    await _grant(ops, account, 1500)
    return account


async def test_going_below_a_threshold_alerts_once(ops: Stub) -> None:
    account = await _alerted_account(ops)
    watch = await _alerts(ops, account)
    try:
        up = await watch.take(2)  # from 0 to 1500: back above both
        assert [(e.type, e.threshold) for e in up] == [
            (E.EVENT_TYPE_BALANCE_RECOVERED, 100),
            (E.EVENT_TYPE_BALANCE_RECOVERED, 1000),
        ]
        await _reserve(ops, account, 600)  # 900: below 1000
        low = await watch.next()
        assert (low.type, low.threshold, low.available_after) == (
            E.EVENT_TYPE_BALANCE_LOW,
            1000,
            900,
        )
        second = await _reserve(ops, account, 100)  # 800: still below, no repeat
        await _release(ops, account, second)  # 900: still below
        await watch.quiet()
    finally:
        watch.close()


async def test_reaching_zero_alerts_depleted(ops: Stub) -> None:
    account = await _alerted_account(ops)
    watch = await _alerts(ops, account)
    try:
        await watch.take(2)
        await _reserve(ops, account, 1500)
        events = await watch.take(3)
        assert [(e.type, e.threshold) for e in events] == [
            (E.EVENT_TYPE_BALANCE_LOW, 1000),
            (E.EVENT_TYPE_BALANCE_LOW, 100),
            (E.EVENT_TYPE_BALANCE_DEPLETED, 0),
        ]
        assert {e.available_after for e in events} == {0}
        await watch.quiet()
    finally:
        watch.close()


async def test_coming_back_above_a_threshold_alerts_recovered(ops: Stub) -> None:
    account = await _alerted_account(ops)
    watch = await _alerts(ops, account)
    try:
        await watch.take(2)
        hold = await _reserve(ops, account, 1450)  # 50
        await watch.take(2)
        await _release(ops, account, hold)  # 1500
        recovered = await watch.take(2)
        assert [(e.type, e.threshold) for e in recovered] == [
            (E.EVENT_TYPE_BALANCE_RECOVERED, 100),
            (E.EVENT_TYPE_BALANCE_RECOVERED, 1000),
        ]
        await watch.quiet()
    finally:
        watch.close()


async def test_an_expiry_that_crosses_alerts_when_settled(ops: Stub, clock: MovableClock) -> None:
    account = await _alerted_account(ops)
    watch = await _alerts(ops, account)
    try:
        await watch.take(2)
        await _reserve(ops, account, 1450, ttl_seconds=60)
        await watch.take(2)  # low for 1000 and 100
        clock.advance(120)
        # The settlement written by this read returns the hold: 1500 again.
        await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
        recovered = await watch.take(2)
        assert [(e.type, e.threshold, e.available_after) for e in recovered] == [
            (E.EVENT_TYPE_BALANCE_RECOVERED, 100, 1500),
            (E.EVENT_TYPE_BALANCE_RECOVERED, 1000, 1500),
        ]
    finally:
        watch.close()


async def test_thresholds_are_account_settings(ops: Stub) -> None:
    account = new_id()
    await _thresholds(ops, account, [100, 1000])
    got: pb.GetAccountResponse = await ops.GetAccount(
        pb.GetAccountRequest(account_id=account), timeout=T
    )
    assert list(got.account.settings.balance_alert_thresholds.thresholds) == [1000, 100]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _thresholds(ops, account, [0])
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(raised.value)[1] == ["settings.balance_alert_thresholds.thresholds"]


async def test_the_service_wide_default_thresholds_apply_to_accounts_without_their_own(
    database_url: str, pki: Path
) -> None:
    server = await start_server(database_url, pki, CREDITS_BALANCE_ALERT_THRESHOLDS="500")
    try:
        async with open_channel(pki, "ops", server.address) as channel:
            stub = Stub(channel)
            account = new_id()
            await _grant(stub, account, 800)  # the account's first change: state, no alert
            await _reserve(stub, account, 400)  # 400: below the default's 500
            own = new_id()
            await _thresholds(stub, own, [])  # its own: none
            await _grant(stub, own, 800)
            await _reserve(stub, own, 400)
            for which, expected in ((account, [(E.EVENT_TYPE_BALANCE_LOW, 500)]), (own, [])):
                watch = await _alerts(stub, which)
                try:
                    got = [(e.type, e.threshold) for e in await watch.take(len(expected))]
                    assert got == expected
                    await watch.quiet()
                finally:
                    watch.close()
    finally:
        await server.stop()


async def _set_price(stub: Stub, job_type: str, **fields: object) -> pb.Price:
    request = pb.SetPriceRequest(job_type=job_type, **fields)  # type: ignore[arg-type]
    response: pb.SetPriceResponse = await stub.SetPrice(request, timeout=T)
    return response.price


async def test_a_price_change_is_an_event_of_no_account(
    ops: Stub, clock: MovableClock, credits_server: RunningServer, pki: Path
) -> None:
    """Streams started before SetPrice: a type filter selects the price events, an
    account filter leaves them out, the dev caller `events` sees them among the others."""
    job_type, account = new_id("page"), new_id()
    async with (
        open_channel(pki, "events", credits_server.address) as channel,
        watching(
            ops, from_now=True, types=[E.EVENT_TYPE_PRICE_SET, E.EVENT_TYPE_PRICE_RETIRED]
        ) as prices,
        watching(ops, from_now=True, account_id=account) as accounts,
        watching(Stub(channel), from_now=True) as everything,
    ):
        for watch in (prices, accounts, everything):
            await watch.call.initial_metadata()
        await asyncio.sleep(STREAM_START_SECONDS)
        effective = clock() + datetime.timedelta(hours=1)
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(effective)
        priced = await _set_price(
            ops, job_type, unit_price=12, unit="page", effective_at=stamp, reason="launch"
        )
        retired = await _set_price(ops, job_type, retire=True, effective_at=stamp)
        grant = await _grant(ops, account, 5)
        price_set, price_retired = await prices.take(2)
        (granted,) = await accounts.take(1)
        seen = [await everything.next() for _ in range(3)]
        await prices.quiet()
        await accounts.quiet()
    assert price_set.type == E.EVENT_TYPE_PRICE_SET
    assert price_set.account_id == ""
    assert price_set.price == priced
    assert (price_set.price.job_type, price_set.price.unit_price, price_set.price.unit) == (
        job_type,
        12,
        "page",
    )
    assert price_set.price.effective_at == priced.effective_at == stamp
    assert (price_set.caller, price_set.price.set_by, price_set.price.reason) == (
        "ops",
        "ops",
        "launch",
    )
    assert price_set.occurred_at == priced.set_at
    assert (price_set.amount, price_set.available_after) == (0, 0)
    assert price_retired.type == E.EVENT_TYPE_PRICE_RETIRED
    assert price_retired.price == retired
    assert price_retired.price.retired
    assert price_retired.price.unit_price == 0
    assert price_retired.price.version > price_set.price.version
    assert (granted.type, granted.grant_id) == (E.EVENT_TYPE_GRANTED, grant.grant_id)
    assert not granted.HasField("price")
    assert [e.event_id for e in seen] == [
        price_set.event_id,
        price_retired.event_id,
        granted.event_id,
    ]
    # A price event's cursor resumes like any other.
    async with watching(
        ops,
        after_cursor=price_set.cursor,
        types=[E.EVENT_TYPE_PRICE_SET, E.EVENT_TYPE_PRICE_RETIRED],
    ) as resumed:
        assert (await resumed.next()).event_id == price_retired.event_id


class _CountingReads:
    """The server's store, counting the reads of the outbox."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.reads = 0

    async def events(self, *args: Any) -> EventPage:
        self.reads += 1
        return await self._store.events(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_stream_woken_often_reads_at_most_once_per_interval(
    credits_server: RunningServer,
) -> None:
    """Every call that ends wakes every stream of every process (NOTIFY, coalesced per
    process to one per NOTIFY_COALESCE_SECONDS): a stream reads at most once per
    EVENT_READ_INTERVAL_MIN_SECONDS however often it is woken, not once per wake-up."""
    store = _CountingReads(credits_server.store)
    ledger = Ledger(
        cast(Store, store), policy(credits_server.settings), signals=credits_server.store.signals
    )
    query = WatchEventsQuery(after_cursor=None, from_oldest=False, account_id=new_id(), types=())
    events = cast(AsyncGenerator[Event, None], await ledger.watch_events(query))

    async def first() -> Event:
        return await anext(events)

    reading = asyncio.create_task(first())
    loop = asyncio.get_running_loop()
    woken_until = loop.time() + WOKEN_SECONDS
    while loop.time() < woken_until:
        credits_server.store.signals.changed()  # as when a call ends
        await asyncio.sleep(NOTIFY_COALESCE_SECONDS / 4)
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    await events.aclose()
    # Woken about WOKEN_SECONDS / NOTIFY_COALESCE_SECONDS (100) times.
    assert 2 <= store.reads <= WOKEN_SECONDS / limits.EVENT_READ_INTERVAL_MIN_SECONDS + 2
