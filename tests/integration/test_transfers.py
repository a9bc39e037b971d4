"""Transfer through the real server over mTLS on real PostgreSQL (docs/contract.md,
"Transfer"): credits leave the source in burn-down order and arrive as TRANSFER grants
that keep each lot's expiry and priority, both statements name the transfer, opposite
transfers never deadlock, and every refusal changes nothing."""

import asyncio
import datetime
import random

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import MovableClock, error_details, funded_account, new_id

# The concurrency test: this many transfers at once, alternating direction.
CONCURRENT_TRANSFERS = 50
CONCURRENT_START_AMOUNT = 1_000
CONCURRENT_AMOUNT_MAX = 40
# How many grants each account of the concurrency test starts with, so that transfers
# take several lots.
CONCURRENT_START_GRANTS = 5
DAY = datetime.timedelta(days=1)
# Long enough to make the grant and transfer it before it expires, on a loaded machine.
TRANSFERRED_LOT_LIFETIME_SECONDS = 30


async def _grant(
    stub: Stub,
    account: str,
    amount: int,
    *,
    priority: int = 0,
    expires_at: datetime.datetime | None = None,
    external_ref: str = "",
) -> pb.Grant:
    request = pb.GrantRequest(
        account_id=account,
        amount=amount,
        source=pb.GRANT_SOURCE_PURCHASE,
        idempotency_key=new_id("grant"),
        priority=priority,
        external_ref=external_ref,
    )
    if expires_at is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(expires_at)
        request.expires_at.CopyFrom(stamp)
    response: pb.GrantResponse = await stub.Grant(request, timeout=T)
    return response.grant


def _request(
    source: str, destination: str, amount: int, key: str | None = None, description: str = ""
) -> pb.TransferRequest:
    return pb.TransferRequest(
        from_account_id=source,
        to_account_id=destination,
        amount=amount,
        idempotency_key=key or new_id("xfer"),
        description=description,
    )


async def _transfer(stub: Stub, request: pb.TransferRequest) -> pb.TransferRecord:
    response: pb.TransferResponse = await stub.Transfer(request, timeout=T)
    return response.transfer


async def _available(stub: Stub, account: str) -> int:
    b: pb.GetBalanceResponse = await stub.GetBalance(
        pb.GetBalanceRequest(account_id=account), timeout=T
    )
    return b.available


async def _refusal(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    reason, fields = error_details(raised.value)
    return raised.value.code(), reason, fields


async def _entries(stub: Stub, account: str) -> list[pb.LedgerEntry]:
    response: pb.ListEntriesResponse = await stub.ListEntries(
        pb.ListEntriesRequest(account_id=account, page_size=500), timeout=T
    )
    return list(response.entries)


async def _grants(stub: Stub, account: str) -> list[pb.Grant]:
    response: pb.ListGrantsResponse = await stub.ListGrants(
        pb.ListGrantsRequest(account_id=account, page_size=500), timeout=T
    )
    return [lot.grant for lot in response.grants]


async def _freeze(stub: Stub, account: str) -> None:
    await stub.UpdateAccountSettings(
        pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(frozen=True),
            update_mask=field_mask_pb2.FieldMask(paths=["frozen"]),
        ),
        timeout=T,
    )


async def test_a_transfer_takes_lots_in_burn_down_order_keeping_expiry_and_priority(
    ops: Stub, clock: MovableClock
) -> None:
    source, destination = new_id(), new_id()
    expiry = (clock() + DAY).replace(microsecond=0)
    soon = await _grant(ops, source, 100, expires_at=expiry)
    later = await _grant(ops, source, 200, priority=5)
    moved = await _transfer(ops, _request(source, destination, 150, description="team move"))

    assert (moved.from_account_id, moved.to_account_id, moved.amount) == (
        source,
        destination,
        150,
    )
    assert [(lot.source_grant_id, lot.amount) for lot in moved.lots] == [
        (soon.grant_id, 100),
        (later.grant_id, 50),
    ]
    assert moved.lots[0].expires_at.ToDatetime(tzinfo=datetime.UTC) == expiry
    assert not moved.lots[1].HasField("expires_at")
    assert [lot.priority for lot in moved.lots] == [0, 5]
    assert (await _available(ops, source), await _available(ops, destination)) == (150, 150)

    arrived = {g.grant_id: g for g in await _grants(ops, destination)}
    assert set(arrived) == {lot.destination_grant_id for lot in moved.lots}
    first, second = (arrived[lot.destination_grant_id] for lot in moved.lots)
    assert {first.source, second.source} == {pb.GRANT_SOURCE_TRANSFER}
    assert (first.original_amount, first.remaining_amount, first.priority) == (100, 100, 0)
    assert first.expires_at == moved.lots[0].expires_at
    assert (second.original_amount, second.priority) == (50, 5)
    assert not second.HasField("expires_at")


async def test_transferred_credits_expire_when_their_lot_would_have(
    ops: Stub, clock: MovableClock
) -> None:
    source, destination = new_id(), new_id()
    lifetime = datetime.timedelta(seconds=TRANSFERRED_LOT_LIFETIME_SECONDS)
    await _grant(ops, source, 70, expires_at=clock() + lifetime)
    await _grant(ops, source, 30)
    await _transfer(ops, _request(source, destination, 100))
    # Just past the lot's expiry: the session's clock is shared, so it moves no further.
    clock.advance(TRANSFERRED_LOT_LIFETIME_SECONDS + 1)
    assert await _available(ops, destination) == 30


async def test_both_statements_name_the_transfer_and_add_up(ops: Stub) -> None:
    source = await funded_account(ops, 60)
    await _grant(ops, source, 40)
    destination = await funded_account(ops, 5)
    moved = await _transfer(ops, _request(source, destination, 80))

    out = [e for e in await _entries(ops, source) if e.kind == pb.ENTRY_KIND_TRANSFER_OUT]
    into = [e for e in await _entries(ops, destination) if e.kind == pb.ENTRY_KIND_TRANSFER_IN]
    assert {e.transfer_id for e in out} == {e.transfer_id for e in into} == {moved.transfer_id}
    assert sorted((e.grant_id, -e.amount) for e in out) == sorted(
        (lot.source_grant_id, lot.amount) for lot in moved.lots
    )
    assert sorted((e.grant_id, e.amount) for e in into) == sorted(
        (lot.destination_grant_id, lot.amount) for lot in moved.lots
    )
    # Newest first: the newest entry's balance is the available balance.
    assert (await _entries(ops, source))[0].balance_after == 20
    assert (await _entries(ops, destination))[0].balance_after == 85


async def test_more_than_is_available_is_insufficient_and_changes_nothing(
    ops: Stub, backend: Stub
) -> None:
    source = await funded_account(ops, 100)
    destination = new_id()
    await backend.Reserve(
        pb.ReserveRequest(account_id=source, amount=30, idempotency_key=new_id("res")), timeout=T
    )
    code, reason, _ = await _refusal(ops.Transfer(_request(source, destination, 71), timeout=T))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    assert (await _available(ops, source), await _available(ops, destination)) == (70, 0)
    assert [e.kind for e in await _entries(ops, source)] == [
        pb.ENTRY_KIND_RESERVE,
        pb.ENTRY_KIND_GRANT,
    ]


async def test_an_account_without_credits_is_insufficient(ops: Stub) -> None:
    code, reason, _ = await _refusal(ops.Transfer(_request(new_id(), new_id(), 1), timeout=T))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")


async def test_a_frozen_source_refuses_and_a_frozen_destination_receives(ops: Stub) -> None:
    frozen_source = await funded_account(ops, 100)
    await _freeze(ops, frozen_source)
    code, reason, _ = await _refusal(ops.Transfer(_request(frozen_source, new_id(), 10), timeout=T))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN")
    assert await _available(ops, frozen_source) == 100

    source, frozen_destination = await funded_account(ops, 100), new_id()
    await _freeze(ops, frozen_destination)
    await _transfer(ops, _request(source, frozen_destination, 10))
    assert await _available(ops, frozen_destination) == 10


async def test_the_same_account_on_both_sides_is_invalid(ops: Stub) -> None:
    account = await funded_account(ops, 100)
    code, reason, fields = await _refusal(ops.Transfer(_request(account, account, 10), timeout=T))
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["to_account_id"],
    )


async def test_bad_fields_are_all_named(ops: Stub) -> None:
    code, _, fields = await _refusal(
        ops.Transfer(
            pb.TransferRequest(from_account_id="", to_account_id="no spaces", amount=0),
            timeout=T,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["from_account_id", "to_account_id", "amount", "idempotency_key"]


async def test_a_replay_answers_the_original_and_another_request_is_refused(
    ops: Stub,
) -> None:
    source, destination = await funded_account(ops, 100), new_id()
    request = _request(source, destination, 40)
    first = await _transfer(ops, request)
    await _freeze(ops, source)  # a replay answers from the record, whatever came since
    assert await _transfer(ops, request) == first
    assert (await _available(ops, source), await _available(ops, destination)) == (60, 40)

    other = _request(source, destination, 41, key=request.idempotency_key)
    code, reason, _ = await _refusal(ops.Transfer(other, timeout=T))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


async def test_backend_callers_may_not_transfer(ops: Stub, backend: Stub) -> None:
    source = await funded_account(ops, 100)
    code, reason, _ = await _refusal(backend.Transfer(_request(source, new_id(), 1), timeout=T))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert await _available(ops, source) == 100


async def test_revoking_a_purchase_transferred_away_records_debt_on_the_source_grant(
    ops: Stub,
) -> None:
    source, destination, ref = new_id(), new_id(), new_id("pi")
    purchase = await _grant(ops, source, 100, external_ref=ref)
    moved = await _transfer(ops, _request(source, destination, 80))
    revoked: pb.RevokeResponse = await ops.Revoke(
        pb.RevokeRequest(external_ref=ref, idempotency_key=new_id("rev")), timeout=T
    )
    assert revoked.grant.grant_id == purchase.grant_id
    assert (revoked.revoked_amount, revoked.unrecovered_amount) == (20, 80)
    assert revoked.grant.unrecovered_amount == 80
    assert (await _available(ops, source), await _available(ops, destination)) == (0, 80)

    # The transferred grant is a grant of its own, which ops can revoke by its id.
    arrived = moved.lots[0].destination_grant_id
    again: pb.RevokeResponse = await ops.Revoke(
        pb.RevokeRequest(account_id=destination, grant_id=arrived, idempotency_key=new_id("rev")),
        timeout=T,
    )
    assert (again.revoked_amount, again.unrecovered_amount) == (80, 0)
    assert await _available(ops, destination) == 0


async def test_opposite_concurrent_transfers_conserve_the_sum_and_replay_the_same(
    ops: Stub,
) -> None:
    left, right = new_id("left"), new_id("right")
    for account in (left, right):
        for _ in range(CONCURRENT_START_GRANTS):
            await _grant(ops, account, CONCURRENT_START_AMOUNT // CONCURRENT_START_GRANTS)
    rng = random.Random(19)
    requests = [
        _request(left, right, rng.randint(1, CONCURRENT_AMOUNT_MAX))
        if i % 2 == 0
        else _request(right, left, rng.randint(1, CONCURRENT_AMOUNT_MAX))
        for i in range(CONCURRENT_TRANSFERS)
    ]
    first = await asyncio.gather(*(_transfer(ops, r) for r in requests))
    total = await _available(ops, left) + await _available(ops, right)
    assert total == 2 * CONCURRENT_START_AMOUNT
    moved_right = sum(r.amount for r in requests if r.from_account_id == left)
    moved_left = sum(r.amount for r in requests if r.from_account_id == right)
    assert await _available(ops, right) == CONCURRENT_START_AMOUNT + moved_right - moved_left

    replays = await asyncio.gather(*(_transfer(ops, r) for r in requests))
    assert replays == first
    assert await _available(ops, left) + await _available(ops, right) == total
    entries = await _entries(ops, left) + await _entries(ops, right)
    transfer_entries = [e for e in entries if e.transfer_id]
    assert len({e.transfer_id for e in transfer_entries}) == CONCURRENT_TRANSFERS
    assert sum(e.amount for e in transfer_entries) == 0


async def test_the_database_refuses_a_transfer_that_does_not_balance(
    ops: Stub, admin_engine: AsyncEngine
) -> None:
    source, destination = await funded_account(ops, 10), await funded_account(ops, 10)
    with pytest.raises(DBAPIError, match="does not balance"):
        async with admin_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO transfers (transfer_id, from_account_id, to_account_id,"
                    " amount, caller, created_at)"
                    " VALUES (gen_random_uuid(), :s, :d, 5, 'ops', now())"
                ),
                {"s": source, "d": destination},
            )


async def test_an_expired_grant_of_the_source_gives_nothing(ops: Stub, clock: MovableClock) -> None:
    source, destination = new_id(), new_id()
    lifetime = datetime.timedelta(seconds=TRANSFERRED_LOT_LIFETIME_SECONDS)
    await _grant(ops, source, 50, expires_at=clock() + lifetime)
    lasting = await _grant(ops, source, 20)
    clock.advance(TRANSFERRED_LOT_LIFETIME_SECONDS + 1)
    code, reason, _ = await _refusal(ops.Transfer(_request(source, destination, 21), timeout=T))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    moved = await _transfer(ops, _request(source, destination, 20))
    assert [(lot.source_grant_id, lot.amount) for lot in moved.lots] == [(lasting.grant_id, 20)]
