"""What operators and long jobs read and extend (docs/contract.md): ListGrants,
ListEntries, GetReservation and ExtendReservation through the real server over mTLS on
real PostgreSQL. Time moves with the suite's clock, or with a server's own clock where
it must move by days."""

import asyncio
import datetime
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service import settings
from service.ledger import paging
from service.ledger.operations import ENTRIES_LIST
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import (
    MovableClock,
    error_details,
    funded_account,
    new_id,
    open_channel,
    server_settings,
    start_server,
)

DAY_SECONDS = 24 * 3600
# The lifetime cap's default: a week from a reservation's creation.
LIFETIME_MAX_DEFAULT = datetime.timedelta(days=7)


def _stamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def _grant(
    stub: Stub, account: str, amount: int, *, expires_at: datetime.datetime | None = None, **f: int
) -> pb.Grant:
    request = pb.GrantRequest(
        account_id=account,
        amount=amount,
        source=pb.GRANT_SOURCE_PURCHASE,
        idempotency_key=new_id("grant"),
        **f,  # type: ignore[arg-type]
    )
    if expires_at is not None:
        request.expires_at.CopyFrom(_stamp(expires_at))
    response: pb.GrantResponse = await stub.Grant(request, timeout=T)
    return response.grant


async def _reserve(stub: Stub, account: str, amount: int, ttl_seconds: int = 900) -> str:
    request = pb.ReserveRequest(
        account_id=account,
        amount=amount,
        idempotency_key=new_id("res"),
        ttl=duration_pb2.Duration(seconds=ttl_seconds),
    )
    response: pb.ReserveResponse = await stub.Reserve(request, timeout=T)
    return response.reservation.reservation_id


async def _extend(
    stub: Stub, account: str, reservation_id: str, ttl_seconds: int
) -> pb.ExtendReservationResponse:
    request = pb.ExtendReservationRequest(
        account_id=account,
        reservation_id=reservation_id,
        ttl=duration_pb2.Duration(seconds=ttl_seconds),
    )
    response: pb.ExtendReservationResponse = await stub.ExtendReservation(request, timeout=T)
    return response


async def _all_entries(stub: Stub, account: str, page_size: int) -> list[pb.LedgerEntry]:
    entries: list[pb.LedgerEntry] = []
    token = ""
    while True:
        page: pb.ListEntriesResponse = await stub.ListEntries(
            pb.ListEntriesRequest(account_id=account, page_size=page_size, page_token=token),
            timeout=T,
        )
        assert len(page.entries) <= page_size
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


async def _refusal(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    reason, fields = error_details(caught.value)
    return caught.value.code(), reason, fields


async def test_grants_come_in_burn_down_order_across_pages(ops: Stub, clock: MovableClock) -> None:
    account = new_id()
    never = await _grant(ops, account, 10)
    later = await _grant(ops, account, 10, expires_at=clock() + datetime.timedelta(days=2))
    sooner = await _grant(ops, account, 10, expires_at=clock() + datetime.timedelta(days=1))
    urgent = await _grant(ops, account, 10, priority=-1)
    spent = await _grant(ops, account, 5, priority=-2)
    r = await _reserve(ops, account, 12)  # all of `spent`, 7 of `urgent`
    await ops.Confirm(pb.ConfirmRequest(account_id=account, reservation_id=r, amount=5), timeout=T)
    held = await _reserve(ops, account, 4)  # 4 more of `urgent`

    listed: list[pb.GrantLot] = []
    pages = 0
    token = ""
    while pages == 0 or token:
        page: pb.ListGrantsResponse = await ops.ListGrants(
            pb.ListGrantsRequest(account_id=account, page_size=2, page_token=token), timeout=T
        )
        listed.extend(page.grants)
        token = page.next_page_token
        pages += 1
    assert pages == 2
    # `spent` has nothing left and nothing held: listed only with include_finished.
    assert [lot.grant.grant_id for lot in listed] == [
        urgent.grant_id,
        sooner.grant_id,
        later.grant_id,
        never.grant_id,
    ]
    first = listed[0]
    assert (first.grant.remaining_amount, first.held_amount) == (6, 4)
    everything: pb.ListGrantsResponse = await ops.ListGrants(
        pb.ListGrantsRequest(account_id=account, include_finished=True), timeout=T
    )
    assert [lot.grant.grant_id for lot in everything.grants][:2] == [
        spent.grant_id,
        urgent.grant_id,
    ]
    assert everything.next_page_token == ""
    await ops.Release(pb.ReleaseRequest(account_id=account, reservation_id=held), timeout=T)


async def test_a_page_token_of_another_account_or_list_is_refused(ops: Stub) -> None:
    account = await funded_account(ops, 10)
    await _grant(ops, account, 10)
    other = await funded_account(ops, 10)
    await _grant(ops, other, 10)
    page: pb.ListGrantsResponse = await ops.ListGrants(
        pb.ListGrantsRequest(account_id=account, page_size=1), timeout=T
    )
    token = page.next_page_token
    assert token
    foreign_account = ops.ListGrants(
        pb.ListGrantsRequest(account_id=other, page_size=1, page_token=token), timeout=T
    )
    assert await _refusal(foreign_account) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["page_token"],
    )
    foreign_list = ops.ListEntries(
        pb.ListEntriesRequest(account_id=account, page_token=token), timeout=T
    )
    assert (await _refusal(foreign_list))[2] == ["page_token"]
    usage = ops.ListUsage(pb.ListUsageRequest(account_id=account, page_token=token), timeout=T)
    assert (await _refusal(usage))[2] == ["page_token"]
    # Well-formed tokens of this account and list whose position is not an entry id.
    for position in ("-1", "1e3", str(2**63)):
        forged = paging.encode(ENTRIES_LIST, account, [position])
        call = ops.ListEntries(
            pb.ListEntriesRequest(account_id=account, page_token=forged), timeout=T
        )
        assert (await _refusal(call))[2] == ["page_token"]


async def test_the_statement_adds_up_to_the_balance_after_every_kind_of_movement(
    ops: Stub, clock: MovableClock
) -> None:
    account = new_id()
    purchase = await _grant(ops, account, 100)
    soon = clock() + datetime.timedelta(seconds=5)
    await _grant(ops, account, 50, expires_at=soon, priority=-1)
    partly = await _reserve(ops, account, 60)  # the promotion's 50, then 10 of the purchase
    # 15 go back, the last taken first: 10 to the purchase, 5 to the promotion.
    await ops.Confirm(
        pb.ConfirmRequest(account_id=account, reservation_id=partly, amount=45), timeout=T
    )
    released = await _reserve(ops, account, 10)
    await ops.Release(pb.ReleaseRequest(account_id=account, reservation_id=released), timeout=T)
    await _reserve(ops, account, 7, ttl_seconds=5)  # 5 of the promotion, 2 of the purchase
    revoke = pb.RevokeRequest(
        account_id=account,
        grant_id=purchase.grant_id,
        amount=30,
        idempotency_key=new_id("revoke"),
    )
    await ops.Revoke(revoke, timeout=T)
    # The hold expires and goes back; the promotion's 5 expire.
    clock.advance(5.5)

    entries = await _all_entries(ops, account, page_size=3)
    balance: pb.GetBalanceResponse = await ops.GetBalance(
        pb.GetBalanceRequest(account_id=account), timeout=T
    )
    assert sum(e.amount for e in entries) == balance.available == entries[0].balance_after
    # Granted, less captured, revoked and expired.
    assert balance.available == 150 - 45 - 30 - 5
    assert {e.kind for e in entries} == {
        pb.ENTRY_KIND_GRANT,
        pb.ENTRY_KIND_RESERVE,
        pb.ENTRY_KIND_CONFIRM_RETURN,
        pb.ENTRY_KIND_RELEASE,
        pb.ENTRY_KIND_RESERVATION_EXPIRY,
        pb.ENTRY_KIND_REVOKE,
        pb.ENTRY_KIND_GRANT_EXPIRY,
    }
    ids = [e.entry_id for e in entries]
    assert ids == sorted(set(ids), reverse=True)
    running = 0
    for e in reversed(entries):
        running += e.amount
        assert e.balance_after == running
    # A filter picks entries without changing their running balances.
    grants_only: pb.ListEntriesResponse = await ops.ListEntries(
        pb.ListEntriesRequest(account_id=account, kinds=[pb.ENTRY_KIND_GRANT]), timeout=T
    )
    assert [(e.entry_id, e.balance_after) for e in grants_only.entries] == [
        (e.entry_id, e.balance_after) for e in entries if e.kind == pb.ENTRY_KIND_GRANT
    ]


async def test_the_statement_filters_by_time_and_checks_its_fields(
    ops: Stub, clock: MovableClock
) -> None:
    account = await funded_account(ops, 10)
    middle = clock()
    await _grant(ops, account, 20)
    since: pb.ListEntriesResponse = await ops.ListEntries(
        pb.ListEntriesRequest(account_id=account, since=_stamp(middle)), timeout=T
    )
    until: pb.ListEntriesResponse = await ops.ListEntries(
        pb.ListEntriesRequest(account_id=account, until=_stamp(middle)), timeout=T
    )
    assert [e.amount for e in since.entries] == [20]
    assert [e.amount for e in until.entries] == [10]
    bad = ops.ListEntries(
        pb.ListEntriesRequest(
            account_id=account,
            since=_stamp(middle),
            until=_stamp(middle),
            kinds=[pb.ENTRY_KIND_UNSPECIFIED],
            page_token="not-a-token",
        ),
        timeout=T,
    )
    assert await _refusal(bad) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["page_token", "until", "kinds"],
    )


async def test_a_reservation_shows_the_grants_it_came_from(backend: Stub, ops: Stub) -> None:
    account = new_id()
    first = await _grant(ops, account, 10, priority=-1)
    second = await _grant(ops, account, 10)
    r = await _reserve(backend, account, 15)
    await backend.Confirm(
        pb.ConfirmRequest(account_id=account, reservation_id=r, amount=12), timeout=T
    )
    got: pb.GetReservationResponse = await backend.GetReservation(
        pb.GetReservationRequest(account_id=account, reservation_id=r), timeout=T
    )
    assert got.reservation.status == pb.RESERVATION_STATUS_CONFIRMED
    assert (got.reservation.confirmed_amount, got.reservation.returned_amount) == (12, 3)
    assert [(a.grant_id, a.amount, a.returned_amount) for a in got.allocations] == [
        (first.grant_id, 10, 0),
        (second.grant_id, 5, 3),
    ]
    created = got.reservation.created_at.ToDatetime(datetime.UTC)
    assert got.extendable_until.ToDatetime(datetime.UTC) == created + LIFETIME_MAX_DEFAULT


async def test_get_reservation_and_list_usage_answer_the_release_reason_as_sent(
    backend: Stub, ops: Stub
) -> None:
    account = await funded_account(ops, 100)
    released = await _reserve(backend, account, 30)
    kept = await _reserve(backend, account, 20)
    reason = "failed: WorkFailed\u202e\x07"
    await backend.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=released, reason=reason), timeout=T
    )
    got: pb.GetReservationResponse = await backend.GetReservation(
        pb.GetReservationRequest(account_id=account, reservation_id=released), timeout=T
    )
    usage: pb.ListUsageResponse = await backend.ListUsage(
        pb.ListUsageRequest(account_id=account), timeout=T
    )
    assert got.reservation.status == pb.RESERVATION_STATUS_RELEASED
    assert got.reservation.release_reason == reason
    assert {r.reservation_id: r.release_reason for r in usage.reservations} == {
        released: reason,
        kept: "",
    }


async def test_another_accounts_reservation_is_not_found(backend: Stub, ops: Stub) -> None:
    account = await funded_account(ops, 10)
    other = await funded_account(ops, 10)
    r = await _reserve(backend, account, 5)
    for call in (
        backend.GetReservation(
            pb.GetReservationRequest(account_id=other, reservation_id=r), timeout=T
        ),
        backend.ExtendReservation(
            pb.ExtendReservationRequest(
                account_id=other, reservation_id=r, ttl=duration_pb2.Duration(seconds=60)
            ),
            timeout=T,
        ),
    ):
        assert await _refusal(call) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND", [])


async def test_an_extended_reservation_outlives_its_first_ttl(
    backend: Stub, ops: Stub, clock: MovableClock
) -> None:
    account = await funded_account(ops, 10)
    r = await _reserve(backend, account, 5, ttl_seconds=2)
    extended = await _extend(backend, account, r, ttl_seconds=60)
    expires = extended.reservation.expires_at.ToDatetime(datetime.UTC)
    assert datetime.timedelta(seconds=59) < expires - clock() <= datetime.timedelta(seconds=60)
    clock.advance(3)
    confirmed: pb.ConfirmResponse = await backend.Confirm(
        pb.ConfirmRequest(account_id=account, reservation_id=r), timeout=T
    )
    assert confirmed.reservation.status == pb.RESERVATION_STATUS_CONFIRMED
    # Settled reservations cannot be extended, nor can expired ones.
    done = backend.ExtendReservation(
        pb.ExtendReservationRequest(
            account_id=account, reservation_id=r, ttl=duration_pb2.Duration(seconds=60)
        ),
        timeout=T,
    )
    assert await _refusal(done) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_NOT_ACTIVE",
        [],
    )
    overdue = await _reserve(backend, account, 5, ttl_seconds=1)
    clock.advance(1.2)
    late = backend.ExtendReservation(
        pb.ExtendReservationRequest(
            account_id=account, reservation_id=overdue, ttl=duration_pb2.Duration(seconds=60)
        ),
        timeout=T,
    )
    assert (await _refusal(late))[1] == "RESERVATION_NOT_ACTIVE"


async def test_an_extension_needs_a_ttl_within_reserves_bounds(backend: Stub, ops: Stub) -> None:
    account = await funded_account(ops, 10)
    r = await _reserve(backend, account, 5)
    for ttl in (
        None,
        duration_pb2.Duration(seconds=0),
        duration_pb2.Duration(seconds=DAY_SECONDS + 1),
    ):
        request = pb.ExtendReservationRequest(account_id=account, reservation_id=r)
        if ttl is not None:
            request.ttl.CopyFrom(ttl)
        refused = backend.ExtendReservation(request, timeout=T)
        assert await _refusal(refused) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            ["ttl"],
        )


@pytest.fixture
async def days_server(database_url: str, pki: Path) -> AsyncIterator[tuple[Stub, MovableClock]]:
    """A server of its own whose clock may move by days without touching the suite's."""
    clock = MovableClock()
    server = await start_server(database_url, pki, clock=clock)
    try:
        async with open_channel(pki, "ops", server.address) as channel:
            yield Stub(channel), clock
    finally:
        await server.stop()


async def test_extensions_stop_at_the_lifetime_cap(
    days_server: tuple[Stub, MovableClock],
) -> None:
    ops, clock = days_server
    account = await funded_account(ops, 10)
    r = await _reserve(ops, account, 5, ttl_seconds=DAY_SECONDS)
    got: pb.GetReservationResponse = await ops.GetReservation(
        pb.GetReservationRequest(account_id=account, reservation_id=r), timeout=T
    )
    cap = got.extendable_until.ToDatetime(datetime.UTC)
    # A daily heartbeat keeps it alive for six days…
    for _ in range(6):
        clock.advance(DAY_SECONDS - 60)
        extended = await _extend(ops, account, r, ttl_seconds=DAY_SECONDS)
        assert extended.extendable_until.ToDatetime(datetime.UTC) == cap
    # …then a full day more would pass the cap: refused, and nothing changes.
    clock.advance(DAY_SECONDS - 60)
    before: pb.GetReservationResponse = await ops.GetReservation(
        pb.GetReservationRequest(account_id=account, reservation_id=r), timeout=T
    )
    refused = _extend(ops, account, r, ttl_seconds=DAY_SECONDS)
    assert await _refusal(refused) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_LIFETIME_EXCEEDED",
        [],
    )
    after: pb.GetReservationResponse = await ops.GetReservation(
        pb.GetReservationRequest(account_id=account, reservation_id=r), timeout=T
    )
    assert after.reservation.expires_at == before.reservation.expires_at
    # What is left up to the cap can still be asked for.
    left = int((cap - clock()).total_seconds())
    last = await _extend(ops, account, r, ttl_seconds=left)
    assert last.reservation.expires_at.ToDatetime(datetime.UTC) <= cap


async def test_backend_may_read_and_extend_a_reservation_but_not_list_an_account(
    backend: Stub, gateway: Stub, ops: Stub
) -> None:
    account = await funded_account(ops, 10)
    denied = (
        backend.ListGrants(pb.ListGrantsRequest(account_id=account), timeout=T),
        backend.ListEntries(pb.ListEntriesRequest(account_id=account), timeout=T),
        gateway.GetReservation(
            pb.GetReservationRequest(account_id=account, reservation_id=new_id()), timeout=T
        ),
    )
    for call in denied:
        assert (await _refusal(call))[:2] == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )


async def test_the_admin_account_view_shows_what_list_grants_answers(
    ops: Stub, database_url: str
) -> None:
    account = await funded_account(ops, 50)
    held = await _reserve(ops, account, 20)
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.admin", "account", account],
        env={**os.environ, "CREDITS_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    listed: pb.ListGrantsResponse = await ops.ListGrants(
        pb.ListGrantsRequest(account_id=account), timeout=T
    )
    (lot,) = listed.grants
    assert f"{lot.grant.grant_id} purchase     original 50 remaining 30 held 20" in shown.stdout
    assert f"{held} reserved" in shown.stdout


async def test_the_configured_lifetime_cap_is_what_extensions_stop_at(
    database_url: str, pki: Path
) -> None:
    cap_seconds = DAY_SECONDS + 3600
    server = await start_server(
        database_url, pki, CREDITS_RESERVATION_LIFETIME_MAX_SECONDS=str(cap_seconds)
    )
    try:
        async with open_channel(pki, "ops", server.address) as channel:
            ops = Stub(channel)
            account = await funded_account(ops, 10)
            r = await _reserve(ops, account, 5)
            extended = await _extend(ops, account, r, ttl_seconds=DAY_SECONDS)
    finally:
        await server.stop()
    created = extended.reservation.created_at.ToDatetime(datetime.UTC)
    until = extended.extendable_until.ToDatetime(datetime.UTC)
    assert until - created == datetime.timedelta(seconds=cap_seconds)


def test_a_lifetime_cap_below_the_longest_ttl_stops_the_start(database_url: str, pki: Path) -> None:
    with pytest.raises(settings.SettingsError, match="CREDITS_RESERVATION_LIFETIME_MAX_SECONDS"):
        server_settings(
            database_url, pki, CREDITS_RESERVATION_LIFETIME_MAX_SECONDS=str(DAY_SECONDS - 1)
        )
