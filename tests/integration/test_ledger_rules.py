"""The rules of the ledger and its errors (docs/contract.md), through the real
server over mTLS on real PostgreSQL."""

import asyncio
import datetime
import re
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub
from service.ledger.operations import Clock, utc_now
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import MovableClock, error_details, new_id

Stub = CreditsServiceStub


async def grant(
    stub: Stub,
    account: str,
    amount: int,
    *,
    key: str | None = None,
    source: int = pb.GRANT_SOURCE_PURCHASE,
    expires_in: datetime.timedelta | None = None,
    clock: Clock = utc_now,
    **fields: object,
) -> pb.Grant:
    request = pb.GrantRequest(
        account_id=account,
        amount=amount,
        source=source,  # type: ignore[arg-type]
        idempotency_key=key or new_id("grant"),
        **fields,  # type: ignore[arg-type]
    )
    if expires_in is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(clock() + expires_in)
        request.expires_at.CopyFrom(stamp)
    response: pb.GrantResponse = await stub.Grant(request, timeout=T)
    return response.grant


async def reserve(
    stub: Stub, account: str, amount: int, *, key: str | None = None, ttl_seconds: float = 0
) -> pb.Reservation:
    request = pb.ReserveRequest(
        account_id=account, amount=amount, idempotency_key=key or new_id("res")
    )
    if ttl_seconds:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl_seconds)))
    response: pb.ReserveResponse = await stub.Reserve(request, timeout=T)
    return response.reservation


async def balance(stub: Stub, account: str) -> tuple[int, int]:
    b = await stub.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    return b.available, b.reserved


async def rejected(call: object) -> tuple[grpc.StatusCode, str, list[str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    reason, fields = error_details(caught.value)
    return caught.value.code(), reason, fields, caught.value.details() or ""


async def allocations(admin_engine: AsyncEngine, reservation_id: str) -> list[tuple[str, int]]:
    async with admin_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT grant_id::text, amount FROM allocations WHERE reservation_id = :r"
                " ORDER BY burn_rank"
            ),
            {"r": reservation_id},
        )
        return [(g, a) for g, a in rows]


# --- grants and idempotency ---


async def test_grant_replay_returns_the_original_grant(ops: Stub) -> None:
    account, key = new_id(), new_id("key")
    first = await grant(ops, account, 500, key=key)
    again = await grant(ops, account, 500, key=key)
    assert again.grant_id == first.grant_id
    assert await balance(ops, account) == (500, 0)


async def test_same_key_different_request_is_idempotency_key_reused(ops: Stub) -> None:
    account, key = new_id(), new_id("key")
    await grant(ops, account, 500, key=key)
    code, reason, _, _ = await rejected(
        ops.Grant(
            pb.GrantRequest(
                account_id=account,
                amount=501,
                source=pb.GRANT_SOURCE_PURCHASE,
                idempotency_key=key,
            ),
            timeout=T,
        )
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert await balance(ops, account) == (500, 0)


async def test_idempotency_keys_are_scoped_to_the_caller(ops: Stub, gateway: Stub) -> None:
    account, key = new_id(), new_id("key")
    by_ops = await grant(ops, account, 100, key=key)
    by_gateway = await grant(gateway, account, 100, key=key)
    assert by_ops.grant_id != by_gateway.grant_id
    assert await balance(ops, account) == (200, 0)


async def test_a_key_used_by_one_rpc_cannot_be_reused_by_another(ops: Stub) -> None:
    account, key = new_id(), new_id("key")
    await grant(ops, account, 100, key=key)
    code, reason, _, _ = await rejected(
        ops.Reserve(pb.ReserveRequest(account_id=account, amount=1, idempotency_key=key), timeout=T)
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


async def test_signup_bonus_is_granted_once_per_account(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 50, source=pb.GRANT_SOURCE_SIGNUP_BONUS)
    code, reason, _, _ = await rejected(
        grant(ops, account, 50, source=pb.GRANT_SOURCE_SIGNUP_BONUS)
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "SIGNUP_BONUS_EXISTS")
    assert await balance(ops, account) == (50, 0)


async def test_external_ref_is_unique(ops: Stub) -> None:
    ref = new_id("pi")
    await grant(ops, new_id(), 10, external_ref=ref)
    code, reason, _, _ = await rejected(grant(ops, new_id(), 10, external_ref=ref))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "EXTERNAL_REF_EXISTS")


# --- reserve ---


async def test_reserve_burns_priority_then_expiry_then_age(
    ops: Stub, admin_engine: AsyncEngine
) -> None:
    account = new_id()
    old_never = await grant(ops, account, 10)
    new_never = await grant(ops, account, 10)
    late_expiry = await grant(ops, account, 10, expires_in=datetime.timedelta(days=2))
    soon_expiry = await grant(ops, account, 10, expires_in=datetime.timedelta(days=1))
    low_priority_number = await grant(ops, account, 10, priority=-1)
    r = await reserve(ops, account, 45)
    assert await allocations(admin_engine, r.reservation_id) == [
        (low_priority_number.grant_id, 10),
        (soon_expiry.grant_id, 10),
        (late_expiry.grant_id, 10),
        (old_never.grant_id, 10),
        (new_never.grant_id, 5),
    ]


async def test_insufficient_credits_changes_nothing_and_names_no_amount(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 1234)
    code, reason, _, message = await rejected(reserve(ops, account, 1235))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    assert not re.search(r"\d", message), message
    assert await balance(ops, account) == (1234, 0)


async def test_reserve_on_an_unknown_account_is_insufficient(ops: Stub) -> None:
    code, reason, _, _ = await rejected(reserve(ops, new_id(), 1))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")


async def test_reserve_replay_returns_the_original_reservation(ops: Stub) -> None:
    account, key = new_id(), new_id("key")
    await grant(ops, account, 100)
    first = await reserve(ops, account, 30, key=key)
    again = await reserve(ops, account, 30, key=key)
    assert again.reservation_id == first.reservation_id
    assert await balance(ops, account) == (70, 30)


# --- confirm and release ---


async def test_partial_confirm_returns_the_rest_at_once(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 1000)
    r = await reserve(ops, account, 300)
    confirmed = (
        await ops.Confirm(
            pb.ConfirmRequest(account_id=account, reservation_id=r.reservation_id, amount=200),
            timeout=T,
        )
    ).reservation
    assert confirmed.status == pb.RESERVATION_STATUS_CONFIRMED
    assert confirmed.confirmed_amount == 200
    assert await balance(ops, account) == (800, 0)


async def test_confirm_without_amount_captures_everything(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 100)
    r = await reserve(ops, account, 60)
    confirmed = (
        await ops.Confirm(
            pb.ConfirmRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
        )
    ).reservation
    assert confirmed.confirmed_amount == 60
    assert await balance(ops, account) == (40, 0)


async def test_confirm_more_than_reserved_is_refused(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 100)
    r = await reserve(ops, account, 60)
    code, reason, _, _ = await rejected(
        ops.Confirm(
            pb.ConfirmRequest(account_id=account, reservation_id=r.reservation_id, amount=61),
            timeout=T,
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CAPTURE_EXCEEDS_RESERVATION")
    assert await balance(ops, account) == (40, 60)


async def test_confirm_and_release_are_idempotent(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 100)
    a = await reserve(ops, account, 10)
    b = await reserve(ops, account, 20)
    confirm = pb.ConfirmRequest(account_id=account, reservation_id=a.reservation_id, amount=5)
    first = (await ops.Confirm(confirm, timeout=T)).reservation
    assert (await ops.Confirm(confirm, timeout=T)).reservation == first
    release = pb.ReleaseRequest(account_id=account, reservation_id=b.reservation_id)
    released = (await ops.Release(release, timeout=T)).reservation
    assert released.status == pb.RESERVATION_STATUS_RELEASED
    assert (await ops.Release(release, timeout=T)).reservation == released
    assert await balance(ops, account) == (95, 0)


async def test_confirm_released_and_release_confirmed_are_not_active(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 100)
    a = await reserve(ops, account, 10)
    b = await reserve(ops, account, 10)
    await ops.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=a.reservation_id), timeout=T
    )
    await ops.Confirm(
        pb.ConfirmRequest(account_id=account, reservation_id=b.reservation_id), timeout=T
    )
    for call in (
        ops.Confirm(
            pb.ConfirmRequest(account_id=account, reservation_id=a.reservation_id), timeout=T
        ),
        ops.Release(
            pb.ReleaseRequest(account_id=account, reservation_id=b.reservation_id), timeout=T
        ),
    ):
        code, reason, _, _ = await rejected(call)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_ACTIVE")
    assert await balance(ops, account) == (90, 0)


async def test_another_accounts_reservation_is_not_found_like_a_missing_one(ops: Stub) -> None:
    owner, stranger = new_id(), new_id()
    await grant(ops, owner, 100)
    await grant(ops, stranger, 100)
    r = await reserve(ops, owner, 10)
    foreign = await rejected(
        ops.Confirm(
            pb.ConfirmRequest(account_id=stranger, reservation_id=r.reservation_id), timeout=T
        )
    )
    missing = await rejected(
        ops.Confirm(
            pb.ConfirmRequest(account_id=stranger, reservation_id=str(uuid.uuid4())), timeout=T
        )
    )
    assert foreign == missing
    assert foreign[:2] == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    foreign_release = await rejected(
        ops.Release(
            pb.ReleaseRequest(account_id=stranger, reservation_id=r.reservation_id), timeout=T
        )
    )
    assert foreign_release[:2] == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    assert await balance(ops, owner) == (90, 10)


# --- expiry ---


async def test_reservation_expiry_is_decided_by_expires_at_not_a_sweeper(
    ops: Stub, clock: MovableClock
) -> None:
    account = new_id()
    await grant(ops, account, 100)
    r = await reserve(ops, account, 40, ttl_seconds=1)
    assert await balance(ops, account) == (60, 40)
    clock.advance(1.2)
    # The test server runs no sweeper: the credits count again at once.
    assert await balance(ops, account) == (100, 0)
    usage = await ops.ListUsage(pb.ListUsageRequest(account_id=account), timeout=T)
    assert usage.reservations[0].status == pb.RESERVATION_STATUS_EXPIRED
    code, reason, _, _ = await rejected(
        ops.Confirm(
            pb.ConfirmRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_ACTIVE")
    # Releasing an expired reservation changes nothing and reports it as it is.
    released = (
        await ops.Release(
            pb.ReleaseRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
        )
    ).reservation
    assert released.status == pb.RESERVATION_STATUS_EXPIRED
    # And the expired hold is spendable by the next Reserve.
    await reserve(ops, account, 100)
    assert await balance(ops, account) == (0, 100)


async def test_expired_grants_neither_count_nor_spend(ops: Stub, clock: MovableClock) -> None:
    account = new_id()
    await grant(ops, account, 30, expires_in=datetime.timedelta(seconds=1), clock=clock)
    await grant(ops, account, 5)
    b = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert (b.available, b.expiring_amount) == (35, 30)
    assert b.HasField("next_expiry")
    clock.advance(1.2)
    b = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert (b.available, b.expiring_amount, b.HasField("next_expiry")) == (5, 0, False)
    _, reason, _, _ = await rejected(reserve(ops, account, 6))
    assert reason == "INSUFFICIENT_CREDITS"


async def test_credits_going_back_to_an_expired_grant_stay_expired(
    ops: Stub, clock: MovableClock
) -> None:
    account = new_id()
    await grant(ops, account, 30, expires_in=datetime.timedelta(seconds=2), clock=clock)
    r = await reserve(ops, account, 20)
    clock.advance(2.2)
    await ops.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
    )
    assert await balance(ops, account) == (0, 0)


async def test_grant_expiry_must_be_in_the_future(ops: Stub) -> None:
    code, _, fields, _ = await rejected(
        grant(ops, new_id(), 10, expires_in=datetime.timedelta(seconds=-5))
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["expires_at"])


# --- revoke ---


async def test_revoke_part_then_all_and_report_what_was_spent(ops: Stub) -> None:
    account = new_id()
    g = await grant(ops, account, 100)
    r = await reserve(ops, account, 30)
    await ops.Confirm(
        pb.ConfirmRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
    )
    part = await ops.Revoke(
        pb.RevokeRequest(
            account_id=account, grant_id=g.grant_id, amount=50, idempotency_key=new_id()
        ),
        timeout=T,
    )
    assert (part.revoked_amount, part.unrecovered_amount) == (50, 0)
    rest = await ops.Revoke(
        pb.RevokeRequest(
            account_id=account, grant_id=g.grant_id, amount=0, idempotency_key=new_id()
        ),
        timeout=T,
    )
    # Everything not yet revoked was asked for: 20 remained, 30 were already spent.
    assert (rest.revoked_amount, rest.unrecovered_amount) == (20, 30)
    assert (rest.grant.remaining_amount, rest.grant.revoked_amount) == (0, 70)
    assert await balance(ops, account) == (0, 0)


async def test_revoke_by_external_ref_finds_the_account(ops: Stub) -> None:
    account, ref = new_id(), new_id("pi")
    await grant(ops, account, 100, external_ref=ref)
    key = new_id()
    request = pb.RevokeRequest(external_ref=ref, amount=40, idempotency_key=key)
    first = await ops.Revoke(request, timeout=T)
    again = await ops.Revoke(request, timeout=T)
    assert first.grant.account_id == account
    assert (again.revoked_amount, again.grant.grant_id) == (40, first.grant.grant_id)
    assert await balance(ops, account) == (60, 0)


async def test_revoke_of_another_accounts_grant_is_not_found(ops: Stub) -> None:
    ref = new_id("pi")
    await grant(ops, new_id(), 100, external_ref=ref)
    code, reason, _, _ = await rejected(
        ops.Revoke(
            pb.RevokeRequest(account_id=new_id(), external_ref=ref, idempotency_key=new_id()),
            timeout=T,
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "GRANT_NOT_FOUND")
    code, reason, _, _ = await rejected(
        ops.Revoke(pb.RevokeRequest(external_ref=new_id("pi"), idempotency_key=new_id()), timeout=T)
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "GRANT_NOT_FOUND")


async def test_cumulative_series_converges_on_the_highest_total(ops: Stub) -> None:
    account, ref = new_id(), new_id("pi")
    await grant(ops, account, 1000, external_ref=ref)

    async def refund_total(total: int) -> int:
        response: pb.RevokeResponse = await ops.Revoke(
            pb.RevokeRequest(
                external_ref=ref,
                amount=total,
                idempotency_key=f"{ref}:{total}",
                cumulative_series=f"refund:{ref}",
            ),
            timeout=T,
        )
        return response.revoked_amount

    assert await refund_total(400) == 400
    assert await refund_total(1000) == 600
    assert await refund_total(400) == 400  # a replay of the first delivery: same answer
    assert await refund_total(700) == 0  # a late, lower total asks for nothing more
    assert await balance(ops, account) == (0, 0)


async def test_revoked_credits_held_by_a_reservation_are_collected_when_released(
    ops: Stub,
) -> None:
    account = new_id()
    g = await grant(ops, account, 100)
    r = await reserve(ops, account, 100)
    revoked = await ops.Revoke(
        pb.RevokeRequest(account_id=account, grant_id=g.grant_id, idempotency_key=new_id()),
        timeout=T,
    )
    assert (revoked.revoked_amount, revoked.unrecovered_amount) == (0, 100)
    await ops.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=r.reservation_id), timeout=T
    )
    assert await balance(ops, account) == (0, 0)


# --- list usage ---


async def test_list_usage_is_newest_first_and_paged(ops: Stub) -> None:
    account = new_id()
    await grant(ops, account, 100)
    made = [(await reserve(ops, account, 1)).reservation_id for _ in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await ops.ListUsage(
            pb.ListUsageRequest(account_id=account, page_size=2, page_token=token), timeout=T
        )
        assert len(page.reservations) <= 2
        seen += [r.reservation_id for r in page.reservations]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))


@pytest.mark.parametrize(("asked", "served"), [(0, 50), (-5, 1), (1000, 100), (7, 7)])
async def test_page_size_is_clamped(ops: Stub, asked: int, served: int) -> None:
    account = new_id()
    await grant(ops, account, 1000)
    await asyncio.gather(*(reserve(ops, account, 1) for _ in range(105)))
    page = await ops.ListUsage(pb.ListUsageRequest(account_id=account, page_size=asked), timeout=T)
    assert len(page.reservations) == served


async def test_a_forged_page_token_is_invalid(ops: Stub) -> None:
    code, _, fields, _ = await rejected(
        ops.ListUsage(pb.ListUsageRequest(account_id=new_id(), page_token="not-a-token"), timeout=T)
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


# --- validation ---


@pytest.mark.parametrize(
    ("request_fields", "bad_fields"),
    [
        ({"account_id": "", "amount": 1}, ["account_id"]),
        ({"account_id": "a b", "amount": 1}, ["account_id"]),
        ({"account_id": "x" * 129, "amount": 1}, ["account_id"]),
        ({"amount": 0}, ["amount"]),
        ({"amount": -3}, ["amount"]),
        ({"amount": 10**13}, ["amount"]),
        ({"amount": 1, "idempotency_key": ""}, ["idempotency_key"]),
        ({"amount": 1, "idempotency_key": "é"}, ["idempotency_key"]),
        ({"amount": 1, "idempotency_key": "k" * 129}, ["idempotency_key"]),
        ({"amount": 1, "description": "d" * 501}, ["description"]),
        ({"amount": 1, "metadata": {"unknown_key": "v"}}, ["metadata[unknown_key]"]),
        ({"amount": 1, "metadata": {"trace_id": "v" * 257}}, ["metadata[trace_id]"]),
        ({"amount": 1, "ttl": duration_pb2.Duration(seconds=0)}, ["ttl"]),
        ({"amount": 1, "ttl": duration_pb2.Duration(seconds=86401)}, ["ttl"]),
        (
            {"account_id": "", "amount": 0, "idempotency_key": ""},
            ["account_id", "amount", "idempotency_key"],
        ),
    ],
)
async def test_invalid_reserve_names_each_bad_field_and_changes_nothing(
    ops: Stub, request_fields: dict[str, object], bad_fields: list[str]
) -> None:
    account = new_id()
    await grant(ops, account, 100)
    fields: dict[str, object] = {"account_id": account, "idempotency_key": new_id()}
    fields.update(request_fields)
    code, reason, violations, _ = await rejected(
        ops.Reserve(pb.ReserveRequest(**fields), timeout=T)  # type: ignore[arg-type]
    )
    assert (code, reason, violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        bad_fields,
    )
    assert await balance(ops, account) == (100, 0)


async def test_too_many_metadata_entries_are_refused(ops: Stub) -> None:
    metadata = {f"k{i}": "v" for i in range(17)}
    code, _, fields, _ = await rejected(
        ops.Reserve(
            pb.ReserveRequest(
                account_id=new_id(), amount=1, idempotency_key=new_id(), metadata=metadata
            ),
            timeout=T,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata" in fields


async def test_grant_source_must_be_specified(ops: Stub) -> None:
    code, _, fields, _ = await rejected(
        grant(ops, new_id(), 10, source=pb.GRANT_SOURCE_UNSPECIFIED)
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["source"])
    code, _, fields, _ = await rejected(grant(ops, new_id(), 10, source=99))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["source"])


async def test_confirm_needs_a_uuid(ops: Stub) -> None:
    code, _, fields, _ = await rejected(
        ops.Confirm(pb.ConfirmRequest(account_id=new_id(), reservation_id="nope"), timeout=T)
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["reservation_id"])


async def test_every_response_carries_a_request_id(ops: Stub) -> None:
    call = ops.GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
    await call
    headers = dict(await call.initial_metadata())
    assert re.fullmatch(r"[0-9a-f]{32}", str(headers["x-request-id"]))


async def test_rpcs_are_counted_by_method_and_code(ops: Stub) -> None:
    def served(code: str) -> float:
        labels = {"method": "/credits.v1.CreditsService/Reserve", "code": code}
        return REGISTRY.get_sample_value("credits_rpcs_total", labels) or 0.0

    ok, refused = served("OK"), served("FAILED_PRECONDITION")
    account = new_id()
    await grant(ops, account, 1)
    await reserve(ops, account, 1)
    await rejected(reserve(ops, account, 1))
    assert (served("OK"), served("FAILED_PRECONDITION")) == (ok + 1, refused + 1)
