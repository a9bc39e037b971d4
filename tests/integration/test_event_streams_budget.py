"""A process's WatchEvents streams have a budget within its callers' calls
(CREDITS_EVENT_STREAMS_MAX): a stream past it is refused at once, RESOURCE_EXHAUSTED with
RetryInfo, while the calls that move credits still pass; a stream that ends gives its
place back."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.rpc import admission
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import error_details, new_id, open_channel, start_server

STREAMS_MAX = 2
EVENT_WAIT_SECONDS = 10.0


@contextlib.asynccontextmanager
async def live_stream(stub: Stub, account: str) -> AsyncIterator[grpc.aio.UnaryStreamCall]:
    """A stream of `account`'s events, known to be admitted: it has received one (from
    the oldest, so that a grant committed before the stream starts counts too)."""
    call = stub.WatchEvents(pb.WatchEventsRequest(account_id=account, from_oldest=True))
    try:
        await _grant(stub, account)
        response = await asyncio.wait_for(call.read(), EVENT_WAIT_SECONDS)
        assert response.event.account_id == account
        yield call
    finally:
        call.cancel()


async def _grant(stub: Stub, account: str) -> None:
    await stub.Grant(
        pb.GrantRequest(
            account_id=account,
            amount=10,
            source=pb.GRANT_SOURCE_PROMOTION,
            idempotency_key=new_id("grant"),
        ),
        timeout=T,
    )


def _refused() -> float:
    sample = REGISTRY.get_sample_value(
        "credits_rate_limited_total", {"caller": "ops", "method": "WatchEvents"}
    )
    return sample or 0.0


async def test_a_stream_past_the_budget_is_refused_and_calls_still_pass(
    database_url: str, pki: Path
) -> None:
    server = await start_server(database_url, pki, CREDITS_EVENT_STREAMS_MAX=str(STREAMS_MAX))
    try:
        async with open_channel(pki, "ops", server.address) as channel:
            stub = Stub(channel)
            account = new_id()
            refused_before = _refused()
            async with live_stream(stub, account), live_stream(stub, account) as second:
                past = stub.WatchEvents(pb.WatchEventsRequest(account_id=account, from_oldest=True))
                try:
                    await asyncio.wait_for(past.read(), EVENT_WAIT_SECONDS)
                except grpc.aio.AioRpcError as err:
                    refusal = err
                else:
                    raise AssertionError("a stream past the budget was admitted")
                assert refusal.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert error_details(refusal)[0] == "RATE_LIMITED"
                status = rpc_status.from_call(refusal)
                assert status is not None
                retry = error_details_pb2.RetryInfo()
                assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
                assert retry.retry_delay.seconds == admission.EVENT_STREAM_RETRY_SECONDS
                assert _refused() == refused_before + 1
                # The calls that move credits keep their places.
                await stub.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
                await _grant(stub, account)
                second.cancel()
                # The place comes back once the server has seen the stream end.
                codes = []
                for _ in range(50):
                    try:
                        async with live_stream(stub, account):
                            break
                    except grpc.aio.AioRpcError as err:
                        codes.append(err.code())
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the ended stream's place did not come back")
                assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        await server.stop()
