"""Half-open calls of a peer that is no caller never take a caller's place (issue 23.2).

A certificate of the CA naming no caller (what a health probe gets) opens 8 connections
with 90 calls each to health `Check` and `Watch`, sending the headers of each call but
never its request message. gRPC counts such a call against the server's concurrent RPCs
as soon as its headers arrive; the backend's GetBalance must still be served at once,
the peer's calls beyond its own budget are refused at once, and those within it end
when the request message does not arrive in time.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from credits.v1 import credits_pb2
from credits.v1.credits_pb2_grpc import CreditsServiceStub
from scripts.devpki import Issued, issue
from service.ledger import limits
from service.rpc import admission
from service.rpc.health import ANONYMOUS_WATCHES_MAX
from tests.access_support import dev_ca, tls_channel
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, new_id, open_channel, start_server

CONNECTIONS = 8
CALLS_PER_CONNECTION = 90
CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
# A caller's call is answered this fast while the peer holds its calls open: it does not
# wait for any of them to end.
PROMPT_SECONDS = 2.0
# The peer's calls that the server keeps open end this long after their headers, at most.
ENDED_WITHIN_SECONDS = admission.REQUEST_MESSAGE_WAIT_SECONDS + 3.0


def own_connection(pki: Path, address: str, client: Issued, number: int) -> grpc.aio.Channel:
    """A channel on a connection of its own: channels with the same options would share one."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )
    return grpc.aio.secure_channel(
        address,
        credentials,
        options=[("grpc.use_local_subchannel_pool", 1), ("test.connection", number)],
    )


async def never_sent(gate: asyncio.Event) -> AsyncIterator[health_pb2.HealthCheckRequest]:
    """A request stream that sends nothing until the test ends: the call's headers go
    out, its request message never does."""
    await gate.wait()
    return
    yield  # pragma: no cover - makes this an async generator


def half_open(channel: grpc.aio.Channel, method: str, gate: asyncio.Event) -> grpc.aio.Call:
    """A call to a unary-request health method that sends its headers and no message."""
    call: grpc.aio.StreamStreamCall = channel.stream_stream(
        method,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(never_sent(gate))
    return call


async def outcome(call: grpc.aio.StreamStreamCall) -> grpc.StatusCode:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return await call.code()


async def get_balance_seconds(server: RunningServer, pki: Path) -> float:
    async with open_channel(pki, "backend", server.address) as channel:
        started = time.monotonic()
        await CreditsServiceStub(channel).GetBalance(
            credits_pb2.GetBalanceRequest(account_id=new_id()), timeout=T
        )
        return time.monotonic() - started


async def test_720_half_open_health_calls_of_a_non_caller_leave_callers_served(
    database_url: str, pki: Path
) -> None:
    server = await start_server(database_url, pki)
    probe = issue(dev_ca(pki), "kubelet")
    gate = asyncio.Event()
    channels = [own_connection(pki, server.address, probe, n) for n in range(CONNECTIONS)]
    try:
        assert server.settings.max_concurrent_rpcs == 256
        calls = [
            half_open(channel, CHECK if i % 2 else WATCH, gate)
            for channel in channels
            for i in range(CALLS_PER_CONNECTION)
        ]
        outcomes = [asyncio.ensure_future(outcome(call)) for call in calls]
        # Every connection is up and its calls' headers have had time to arrive.
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), T)
        await asyncio.sleep(1.0)
        assert await get_balance_seconds(server, pki) < PROMPT_SECONDS
        refused = [o.result() for o in outcomes if o.done()]
        budget = ANONYMOUS_WATCHES_MAX + admission.ANONYMOUS_CALLS_MAX
        assert len(refused) >= len(calls) - budget, "calls over the budget are refused at once"
        assert set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # Those within the budget end without their message, and give their place back.
        ended, _ = await asyncio.wait(outcomes, timeout=ENDED_WITHIN_SECONDS)
        assert len(ended) == len(calls), "a call without a message stays open"
        assert {o.result() for o in ended} == {
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }
        async with tls_channel(pki, server.address, probe) as anonymous:
            check = anonymous.unary_unary(
                CHECK,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            answer = await check(health_pb2.HealthCheckRequest(service=""), timeout=T)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        gate.set()
        for channel in channels:
            await channel.close()
        await server.stop()


async def test_a_request_over_the_size_limit_is_still_refused_by_grpc(
    backend: CreditsServiceStub,
) -> None:
    """Admission reads unary requests itself; gRPC's message size limit still holds."""
    request = credits_pb2.GetBalanceRequest(account_id="a" * (limits.GRPC_MESSAGE_BYTES_MAX + 1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await backend.GetBalance(request, timeout=T)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_callers_half_open_calls_count_against_the_callers_budget_until_they_end(
    database_url: str, pki: Path
) -> None:
    server = await start_server(
        database_url, pki, CREDITS_MAX_CONCURRENT_RPCS="2", CREDITS_DB_POOL_SIZE="1"
    )
    probe = issue(dev_ca(pki), "kubelet")
    gate = asyncio.Event()
    try:
        async with (
            open_channel(pki, "backend", server.address) as caller,
            tls_channel(pki, server.address, probe) as anonymous,
        ):
            held = [
                caller.stream_stream(
                    "/credits.v1.CreditsService/GetBalance",
                    request_serializer=credits_pb2.GetBalanceRequest.SerializeToString,
                    response_deserializer=credits_pb2.GetBalanceResponse.FromString,
                )(never_sent(gate))
                for _ in range(2)
            ]
            outcomes = [asyncio.ensure_future(outcome(call)) for call in held]
            await asyncio.sleep(1.0)
            request = credits_pb2.GetBalanceRequest(account_id=new_id())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await CreditsServiceStub(caller).GetBalance(request, timeout=T)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == admission.CALLERS_OVER_BUDGET_MESSAGE
            # Not a place of the non-callers' budget: a probe is answered meanwhile.
            check = anonymous.unary_unary(
                CHECK,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            await check(health_pb2.HealthCheckRequest(service=""), timeout=T)
            ended = await asyncio.wait_for(asyncio.gather(*outcomes), ENDED_WITHIN_SECONDS)
            assert ended == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
            await CreditsServiceStub(caller).GetBalance(request, timeout=T)
    finally:
        gate.set()
        await server.stop()
