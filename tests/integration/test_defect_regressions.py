"""Defects found by review, each through the real server: what used to come back as
INTERNAL, UNKNOWN or a wrong OK, and what it must be."""

import datetime

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.ledger import paging
from service.store.reconcile import reconcile
from tests.integration.test_ledger_rules import balance, grant, rejected, reserve
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import MovableClock, new_id

# A client deadline beyond PostgreSQL's int32 lock_timeout (about 24.8 days).
DEADLINE_BEYOND_LOCK_TIMEOUT_SECONDS = 30 * 24 * 3600


async def test_revoke_after_a_debt_met_the_grants_expiry_is_not_internal(
    ops: Stub, clock: MovableClock, admin_engine: AsyncEngine
) -> None:
    account = new_id()
    g = await grant(ops, account, 100, expires_in=datetime.timedelta(seconds=1.5), clock=clock)
    r = await reserve(ops, account, 100, ttl_seconds=30)
    first = await ops.Revoke(
        pb.RevokeRequest(account_id=account, grant_id=g.grant_id, idempotency_key=new_id()),
        timeout=T,
    )
    assert (first.revoked_amount, first.unrecovered_amount) == (0, 100)
    clock.advance(2)
    await ops.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
    )
    again = await ops.Revoke(
        pb.RevokeRequest(account_id=account, grant_id=g.grant_id, idempotency_key=new_id()),
        timeout=T,
    )
    assert (again.revoked_amount, again.unrecovered_amount) == (0, 0)
    assert await balance(ops, account) == (0, 0)
    async with admin_engine.connect() as conn:
        assert [d for d in await reconcile(conn) if account in d.subject] == []


async def test_get_balance_agrees_with_reserve_when_an_expired_hold_owes_a_revocation(
    ops: Stub, clock: MovableClock
) -> None:
    account = new_id()
    g = await grant(ops, account, 100)
    await reserve(ops, account, 100, ttl_seconds=1)
    await ops.Revoke(
        pb.RevokeRequest(account_id=account, grant_id=g.grant_id, idempotency_key=new_id()),
        timeout=T,
    )
    clock.advance(1.3)
    assert await balance(ops, account) == (0, 0)
    _, reason, _, _ = await rejected(reserve(ops, account, 100))
    assert reason == "INSUFFICIENT_CREDITS"


async def test_confirming_a_confirmed_reservation_with_another_amount_is_refused(
    ops: Stub,
) -> None:
    account = new_id()
    await grant(ops, account, 100)
    r = await reserve(ops, account, 50)

    def confirm(amount: int | None) -> pb.ConfirmRequest:
        return pb.ConfirmRequest(account_id=account, reservation_id=r.reservation_id, amount=amount)

    await ops.Confirm(confirm(30), timeout=T)
    assert (await ops.Confirm(confirm(30), timeout=T)).reservation.confirmed_amount == 30
    assert (await ops.Confirm(confirm(None), timeout=T)).reservation.confirmed_amount == 30
    code, reason, _, _ = await rejected(ops.Confirm(confirm(40), timeout=T))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_ACTIVE")
    assert await balance(ops, account) == (70, 0)


async def test_a_grant_replayed_after_its_expiry_returns_the_original(
    ops: Stub, clock: MovableClock
) -> None:
    account, key = new_id(), new_id("key")
    expires = timestamp_pb2.Timestamp()
    expires.FromDatetime(clock() + datetime.timedelta(seconds=5))
    request = pb.GrantRequest(
        account_id=account,
        amount=10,
        source=pb.GRANT_SOURCE_PROMOTION,
        idempotency_key=key,
        expires_at=expires,
    )
    first = (await ops.Grant(request, timeout=T)).grant
    clock.advance(10)
    assert (await ops.Grant(request, timeout=T)).grant.grant_id == first.grant_id
    request.idempotency_key = new_id("key")
    code, reason, fields, _ = await rejected(ops.Grant(request, timeout=T))
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["expires_at"],
    )


async def test_out_of_range_times_are_invalid_arguments(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 100)
    for seconds in (10**15, -(10**15)):
        request = pb.ReserveRequest(
            account_id=account,
            amount=1,
            idempotency_key=new_id(),
            ttl=duration_pb2.Duration(seconds=seconds),
        )
        code, _, fields, _ = await rejected(ops.Reserve(request, timeout=T))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["ttl"])
    far = pb.GrantRequest(
        account_id=account,
        amount=1,
        source=pb.GRANT_SOURCE_PROMOTION,
        idempotency_key=new_id(),
        expires_at=timestamp_pb2.Timestamp(seconds=2**62),
    )
    code, _, fields, _ = await rejected(ops.Grant(far, timeout=T))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["expires_at"])
    assert await balance(ops, account) == (100, 0)


async def test_mixed_sign_durations_and_backward_nanos_are_invalid_arguments(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 100)
    r = await reserve(ops, account, 10)
    # 5 s and -999,999,999 ns used to be taken as a ttl of about 4 s.
    mixed = duration_pb2.Duration(seconds=5, nanos=-999_999_999)
    reserving = pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id(), ttl=mixed)
    extending = pb.ExtendReservationRequest(
        account_id=account, reservation_id=r.reservation_id, ttl=mixed
    )
    backward = pb.GrantRequest(
        account_id=account,
        amount=1,
        source=pb.GRANT_SOURCE_PROMOTION,
        idempotency_key=new_id(),
        expires_at=timestamp_pb2.Timestamp(seconds=4_000_000_000, nanos=-1),
    )
    for call, field in (
        (ops.Reserve(reserving, timeout=T), "ttl"),
        (ops.ExtendReservation(extending, timeout=T), "ttl"),
        (ops.Grant(backward, timeout=T), "expires_at"),
    ):
        code, reason, fields, _ = await rejected(call)
        assert (code, reason, fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            [field],
        )
    assert await balance(ops, account) == (90, 10)


async def test_control_characters_in_job_ids_are_invalid_arguments(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 100)
    forged = "\x1b]0;owned\x07\x1b[2J\n  00000000 reserved amount 1"
    request = pb.ReserveRequest(
        account_id=account, amount=1, idempotency_key=new_id(), job_id=forged, job_type="a\x9bb"
    )
    code, reason, fields, _ = await rejected(ops.Reserve(request, timeout=T))
    assert (code, reason, sorted(fields)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["job_id", "job_type"],
    )
    assert await balance(ops, account) == (100, 0)


async def test_nul_characters_are_invalid_arguments(ops: Stub) -> None:
    account = new_id()
    g = await grant(ops, account, 100)
    r = await reserve(ops, account, 10)
    calls = [
        ops.Reserve(
            pb.ReserveRequest(
                account_id=account, amount=1, idempotency_key=new_id(), description="a\x00b"
            ),
            timeout=T,
        ),
        ops.Reserve(
            pb.ReserveRequest(
                account_id=account,
                amount=1,
                idempotency_key=new_id(),
                metadata={"trace_id": "\x00"},
            ),
            timeout=T,
        ),
        ops.Release(
            pb.ReleaseRequest(account_id=account, reservation_id=r.reservation_id, reason="\x00"),
            timeout=T,
        ),
        ops.Revoke(
            pb.RevokeRequest(
                account_id=account, grant_id=g.grant_id, idempotency_key=new_id(), reason="\x00"
            ),
            timeout=T,
        ),
    ]
    for call in calls:
        code, reason, _, _ = await rejected(call)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert await balance(ops, account) == (90, 10)


async def test_forged_and_foreign_page_tokens_are_invalid_arguments(ops: Stub) -> None:
    account, other = new_id(), new_id()
    forged = [
        paging.encode("usage", account, ["0001-01-01T00:30+01:00", str(new_id())]),
        paging.encode("usage", account, ["9999-12-31T23:59:59-01:00", "not-a-uuid"]),
        paging.encode("usage", other, ["2030-01-01T00:00:00+00:00", "0" * 32]),
        "!!!",
        "A" * 1000,
    ]
    for token in forged:
        code, _, fields, _ = await rejected(
            ops.ListUsage(pb.ListUsageRequest(account_id=account, page_token=token), timeout=T)
        )
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


async def test_a_deadline_beyond_the_lock_timeouts_range_still_works(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 10)
    response = await ops.GetBalance(
        pb.GetBalanceRequest(account_id=account), timeout=DEADLINE_BEYOND_LOCK_TIMEOUT_SECONDS
    )
    assert response.available == 10


async def test_a_replayed_grant_says_so_and_a_new_one_does_not(ops: Stub) -> None:
    """The gateway counts a purchase delivered again as `replayed` from this flag (it used
    to guess from the grant's age, which a moved or skewed clock fools)."""
    request = pb.GrantRequest(
        account_id=new_id(),
        amount=10,
        source=pb.GRANT_SOURCE_PURCHASE,
        idempotency_key=new_id("grant"),
    )
    first: pb.GrantResponse = await ops.Grant(request, timeout=T)
    again: pb.GrantResponse = await ops.Grant(request, timeout=T)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.grant == first.grant
