"""RevokeRequest.as_of through the real server over mTLS on real PostgreSQL: a series'
claim ordered by the time of the fact it states (docs/contract.md, Revoke)."""

import datetime

import grpc
from google.protobuf import timestamp_pb2

from credits.v1 import credits_pb2 as pb
from tests.integration.test_ledger_rules import Stub, balance, grant, rejected, reserve
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import new_id

T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def _stamp(seconds: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + datetime.timedelta(seconds=seconds))
    return stamp


async def _refund_total(
    ops: Stub, ref: str, total: int, as_of: int | None, series: str = ""
) -> pb.RevokeResponse:
    request = pb.RevokeRequest(
        external_ref=ref,
        amount=total,
        idempotency_key=f"{ref}:{total}:{as_of}",
        cumulative_series=series or f"refund:{ref}",
    )
    if as_of is not None:
        request.as_of.CopyFrom(_stamp(as_of))
    response: pb.RevokeResponse = await ops.Revoke(request, timeout=T)
    return response


def _amounts(r: pb.RevokeResponse) -> tuple[int, int, int, int]:
    return (r.revoked_amount, r.unrecovered_amount, r.restored_amount, r.cancelled_amount)


async def test_a_newer_lower_total_gives_credits_back_and_an_older_changes_nothing(
    ops: Stub,
) -> None:
    account, ref = new_id(), new_id("pi")
    await grant(ops, account, 1000, external_ref=ref)
    assert _amounts(await _refund_total(ops, ref, 400, as_of=10)) == (400, 0, 0, 0)
    lowered = await _refund_total(ops, ref, 100, as_of=20)
    assert _amounts(lowered) == (0, 0, 300, 0)
    assert (lowered.grant.remaining_amount, lowered.grant.revoked_amount) == (900, 100)
    # A late delivery of the older fact: the grant as it is, nothing done.
    late = await _refund_total(ops, ref, 700, as_of=15)
    assert _amounts(late) == (0, 0, 0, 0)
    assert late.grant.remaining_amount == 900
    # The first request again with its key: a replay, the same answer as then.
    assert _amounts(await _refund_total(ops, ref, 400, as_of=10)) == (400, 0, 0, 0)
    assert await balance(ops, account) == (900, 0)


async def test_a_lowered_claim_cancels_the_debt_first_when_the_credits_were_spent(
    ops: Stub,
) -> None:
    account, ref = new_id(), new_id("pi")
    await grant(ops, account, 1000, external_ref=ref)
    held = await reserve(ops, account, 900)
    assert _amounts(await _refund_total(ops, ref, 400, as_of=10)) == (100, 300, 0, 0)
    assert _amounts(await _refund_total(ops, ref, 0, as_of=20)) == (0, 0, 100, 300)
    await ops.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=held.reservation_id), timeout=T
    )
    assert await balance(ops, account) == (1000, 0)


async def test_the_same_or_no_time_keeps_the_highest(ops: Stub) -> None:
    account, ref = new_id(), new_id("pi")
    await grant(ops, account, 1000, external_ref=ref)
    await _refund_total(ops, ref, 400, as_of=10)
    assert _amounts(await _refund_total(ops, ref, 100, as_of=10)) == (0, 0, 0, 0)
    assert _amounts(await _refund_total(ops, ref, 200, as_of=None)) == (0, 0, 0, 0)
    assert await balance(ops, account) == (600, 0)


async def test_a_withdrawn_series_stays_withdrawn_whatever_its_time(ops: Stub) -> None:
    account, ref = new_id(), new_id("pi")
    await grant(ops, account, 1000, external_ref=ref)
    series = f"dispute:{ref}"
    await _refund_total(ops, ref, 500, as_of=10, series=series)
    withdrawal = pb.RevokeRequest(
        external_ref=ref, idempotency_key=new_id(), cumulative_series=series, withdraw=True
    )
    await ops.Revoke(withdrawal, timeout=T)
    assert _amounts(await _refund_total(ops, ref, 800, as_of=30, series=series)) == (0, 0, 0, 0)
    assert await balance(ops, account) == (1000, 0)


async def test_as_of_without_a_series_is_invalid_and_changes_nothing(ops: Stub) -> None:
    account, ref = new_id(), new_id("pi")
    await grant(ops, account, 1000, external_ref=ref)
    request = pb.RevokeRequest(external_ref=ref, amount=400, idempotency_key=new_id())
    request.as_of.CopyFrom(_stamp(10))
    code, reason, fields, _ = await rejected(ops.Revoke(request, timeout=T))
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["as_of"],
    )
    assert await balance(ops, account) == (1000, 0)
