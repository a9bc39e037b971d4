"""Spend limits apply to transfers, through the real server over mTLS on real PostgreSQL
(docs/contract.md, "Transfer"): credits transferred out count as the source's spend, so a
limit cannot be passed by moving credits away and spending them elsewhere; a Transfer
that would pass a limit is FAILED_PRECONDITION / SPEND_LIMIT_EXCEEDED naming the limit,
changes nothing, and a replay of an earlier transfer still answers it."""

import asyncio
import datetime

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import MovableClock, error_details, funded_account, new_id

DAY_LIMIT = 1_000


async def _settings(ops: Stub, account: str, **settings: int | bool) -> None:
    await ops.UpdateAccountSettings(
        pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(**settings),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=list(settings)),
        ),
        timeout=T,
    )


async def _transfer(stub: Stub, request: pb.TransferRequest) -> pb.TransferRecord:
    response: pb.TransferResponse = await stub.Transfer(request, timeout=T)
    return response.transfer


def _request(source: str, destination: str, amount: int) -> pb.TransferRequest:
    return pb.TransferRequest(
        from_account_id=source,
        to_account_id=destination,
        amount=amount,
        idempotency_key=new_id("xfer"),
    )


async def _reserve(stub: Stub, account: str, amount: int) -> pb.Reservation:
    response: pb.ReserveResponse = await stub.Reserve(
        pb.ReserveRequest(account_id=account, amount=amount, idempotency_key=new_id("job")),
        timeout=T,
    )
    return response.reservation


async def _refusal(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """(code, ErrorInfo reason, ErrorInfo metadata) of a refused call."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    status = rpc_status.from_call(raised.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return raised.value.code(), info.reason, dict(info.metadata)


async def _available(stub: Stub, account: str) -> int:
    response: pb.GetBalanceResponse = await stub.GetBalance(
        pb.GetBalanceRequest(account_id=account), timeout=T
    )
    return response.available


async def _day_use(ops: Stub, account: str) -> pb.SpendLimitUse:
    got: pb.GetAccountResponse = await ops.GetAccount(
        pb.GetAccountRequest(account_id=account), timeout=T
    )
    [use] = got.account.spend_limits
    return use


def _next_utc_midnight(now: datetime.datetime) -> str:
    day = now.astimezone(datetime.UTC).date() + datetime.timedelta(days=1)
    return f"{day.isoformat()}T00:00:00Z"


async def test_a_transfer_that_would_pass_the_day_limit_is_refused_naming_it_and_changes_nothing(
    ops: Stub, backend: Stub
) -> None:
    source = await funded_account(ops, 5_000)
    destination = await funded_account(ops, 10)
    await _settings(ops, source, spend_limit_day=DAY_LIMIT)
    first = await _transfer(ops, _request(source, destination, 600))
    await _reserve(backend, source, 300)

    code, reason, metadata = await _refusal(_transfer(ops, _request(source, destination, 101)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SPEND_LIMIT_EXCEEDED")
    assert metadata == {
        "limit": "day",
        "resets_at": _next_utc_midnight(first.created_at.ToDatetime(datetime.UTC)),
    }
    assert await _available(ops, source) == 5_000 - 600 - 300
    assert await _available(ops, destination) == 10 + 600
    use = await _day_use(ops, source)
    assert (use.used, use.resets_at.ToJsonString()) == (900, metadata["resets_at"])
    assert (await _transfer(ops, _request(source, destination, 100))).amount == 100


async def test_credits_moved_away_cannot_be_reserved_past_the_sources_limit(
    ops: Stub, backend: Stub
) -> None:
    source = await funded_account(ops, 5_000)
    destination = new_id()
    await _settings(ops, source, spend_limit_day=DAY_LIMIT)
    await _transfer(ops, _request(source, destination, DAY_LIMIT))
    code, reason, metadata = await _refusal(_reserve(backend, source, 1))
    assert (code, reason, metadata["limit"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPEND_LIMIT_EXCEEDED",
        "day",
    )
    # The destination has no limit of its own: what arrived there is its to spend.
    assert (await _reserve(backend, destination, DAY_LIMIT)).amount == DAY_LIMIT


async def test_a_replayed_transfer_answers_the_same_after_the_limit_was_reached(
    ops: Stub, backend: Stub
) -> None:
    source = await funded_account(ops, 5_000)
    destination = new_id()
    await _settings(ops, source, spend_limit_day=DAY_LIMIT)
    request = _request(source, destination, 700)
    first = await _transfer(ops, request)
    await _reserve(backend, source, DAY_LIMIT - 700)
    assert await _transfer(ops, request) == first
    assert await _available(ops, destination) == 700


async def test_the_days_room_comes_back_at_the_next_utc_midnight(
    ops: Stub, clock: MovableClock
) -> None:
    source = await funded_account(ops, 5_000)
    destination = new_id()
    await _settings(ops, source, spend_limit_day=DAY_LIMIT)
    await _transfer(ops, _request(source, destination, DAY_LIMIT))
    _, _, metadata = await _refusal(_transfer(ops, _request(source, destination, 1)))
    resets_at = datetime.datetime.fromisoformat(metadata["resets_at"])
    clock.advance((resets_at - clock()).total_seconds() + 1)
    assert (await _transfer(ops, _request(source, destination, DAY_LIMIT))).amount == DAY_LIMIT


CONCURRENT_CALLS = 40
CONCURRENT_AMOUNT = 60


async def test_concurrent_transfers_and_reserves_never_pass_the_day_limit_together(
    ops: Stub, backend: Stub
) -> None:
    source = await funded_account(ops, 5_000)
    destination = new_id()
    await _settings(ops, source, spend_limit_day=DAY_LIMIT)
    calls = [
        _transfer(ops, _request(source, destination, CONCURRENT_AMOUNT))
        if i % 2 == 0
        else _reserve(backend, source, CONCURRENT_AMOUNT)
        for i in range(CONCURRENT_CALLS)
    ]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert {(a.code(), error_details(a)[0]) for a in refused} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "SPEND_LIMIT_EXCEEDED")
    }
    # Both lock the source's account: each sees what the ones before it spent.
    done = len(answers) - len(refused)
    assert done == DAY_LIMIT // CONCURRENT_AMOUNT
    assert (await _day_use(ops, source)).used == done * CONCURRENT_AMOUNT
    assert await _available(ops, source) == 5_000 - done * CONCURRENT_AMOUNT
