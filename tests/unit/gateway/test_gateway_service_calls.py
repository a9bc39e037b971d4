"""The client's side of the contract: requests as built, failures sorted by code and
ErrorInfo reason, against an in-process grpc.aio server that answers from a script."""

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from credits.v1 import credits_pb2, credits_pb2_grpc
from gateway.events import GrantCall, GrantSource, RevokeCall
from gateway.metrics import GatewayMetrics
from gateway.service_calls import Failure, Granted, ServiceCalls, ServiceError

GRANT = GrantCall(
    "acct_1", 1000, GrantSource.PURCHASE, "checkout:cs_1", "pi_1", "d", (("credit_package", "p"),)
)
REVOKE = RevokeCall("pi_1", 400, "refund:ch_1:400", "refund", "refund:ch_1")


class ScriptedService(credits_pb2_grpc.CreditsServiceServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.abort: tuple[int, str] | None = None
        self.delay_seconds = 0.0
        self.replayed = False  # whether the service answers a repeated Grant

    async def _answer(self, request: Any, context: Any) -> None:
        self.requests.append(request)
        await asyncio.sleep(self.delay_seconds)
        if self.abort is not None:
            code, reason = self.abort
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="credits.v1"))
            status = status_pb2.Status(code=code, message="refused", details=[detail])
            await context.abort_with_status(rpc_status.to_status(status))

    async def Grant(self, request: Any, context: Any) -> Any:
        await self._answer(request, context)
        grant = credits_pb2.Grant(grant_id="g-1")
        grant.created_at.FromDatetime(datetime.datetime.now(datetime.UTC))
        return credits_pb2.GrantResponse(grant=grant, replayed=self.replayed)

    async def Revoke(self, request: Any, context: Any) -> Any:
        await self._answer(request, context)
        return credits_pb2.RevokeResponse(
            grant=credits_pb2.Grant(account_id="acct_1"), revoked_amount=400
        )


async def _not_for_the_gateway(self: ScriptedService, request: Any, context: Any) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the gateway")


# Every other RPC of the contract, taken from its descriptor so a new RPC needs no edit here.
for _method in credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].methods:
    if _method.name not in {"Grant", "Revoke"}:
        setattr(ScriptedService, _method.name, _not_for_the_gateway)


@pytest.fixture
async def service() -> AsyncIterator[tuple[ScriptedService, str]]:
    servicer = ScriptedService()  # type: ignore[abstract]  # the rest: set from the descriptor
    server = grpc.aio.server()
    credits_pb2_grpc.add_CreditsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_requests_are_built_from_the_plan(service: tuple[ScriptedService, str]) -> None:
    servicer, address = service
    metrics = GatewayMetrics()
    async with grpc.aio.insecure_channel(address) as channel:
        client = ServiceCalls(channel, metrics)
        assert await client.grant(GRANT) == Granted("g-1", replayed=False)
        revoked = await client.revoke(REVOKE)

    assert (revoked.account_id, revoked.revoked_amount, revoked.unrecovered_amount) == (
        "acct_1",
        400,
        0,
    )
    assert servicer.requests == [
        credits_pb2.GrantRequest(
            account_id="acct_1",
            amount=1000,
            source=credits_pb2.GRANT_SOURCE_PURCHASE,
            idempotency_key="checkout:cs_1",
            external_ref="pi_1",
            description="d",
            metadata={"credit_package": "p"},
        ),
        credits_pb2.RevokeRequest(
            external_ref="pi_1",
            amount=400,
            idempotency_key="refund:ch_1:400",
            reason="refund",
            cumulative_series="refund:ch_1",
        ),
    ]
    assert servicer.requests[1].account_id == ""
    assert metrics.service_calls_total() == 2


@pytest.mark.parametrize("replayed", [True, False])
async def test_a_grant_is_a_replay_when_the_service_says_so(
    service: tuple[ScriptedService, str], replayed: bool
) -> None:
    servicer, address = service
    servicer.replayed = replayed
    async with grpc.aio.insecure_channel(address) as channel:
        granted = await ServiceCalls(channel, GatewayMetrics()).grant(GRANT)

    assert granted == Granted("g-1", replayed=replayed)


@pytest.mark.parametrize(
    ("code", "failure"),
    [
        (code_pb2.ALREADY_EXISTS, Failure.CONFLICT),
        (code_pb2.NOT_FOUND, Failure.NOT_FOUND),
        (code_pb2.UNAVAILABLE, Failure.RETRY_LATER),
        (code_pb2.RESOURCE_EXHAUSTED, Failure.RETRY_LATER),
        (code_pb2.INTERNAL, Failure.RETRY_LATER),
        (code_pb2.INVALID_ARGUMENT, Failure.MISCONFIGURED),
        (code_pb2.PERMISSION_DENIED, Failure.MISCONFIGURED),
        (code_pb2.UNAUTHENTICATED, Failure.MISCONFIGURED),
        (code_pb2.FAILED_PRECONDITION, Failure.MISCONFIGURED),
    ],
)
async def test_failures_are_sorted_by_code_with_their_reason(
    service: tuple[ScriptedService, str], code: int, failure: Failure
) -> None:
    servicer, address = service
    servicer.abort = (code, "SOME_REASON")
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(ServiceError) as raised:
            await ServiceCalls(channel, GatewayMetrics()).grant(GRANT)

    assert raised.value.failure is failure
    assert raised.value.reason == "SOME_REASON"
    assert "refused" not in str(raised.value)  # the service's message is not copied


async def test_an_unreachable_service_is_retry_later() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(ServiceError) as raised:
            await ServiceCalls(channel, GatewayMetrics(), timeout_seconds=2).revoke(REVOKE)

    assert raised.value.failure is Failure.RETRY_LATER
    assert raised.value.code == "UNAVAILABLE"


async def test_a_slow_service_is_cut_off_by_the_deadline(
    service: tuple[ScriptedService, str],
) -> None:
    servicer, address = service
    servicer.delay_seconds = 5.0
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(ServiceError) as raised:
            await ServiceCalls(channel, GatewayMetrics(), timeout_seconds=0.2).grant(GRANT)

    assert raised.value.code == "DEADLINE_EXCEEDED"
    assert raised.value.failure is Failure.RETRY_LATER
