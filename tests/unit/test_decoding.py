"""Request parsing that never raises: bytes that do not parse become an Undecodable,
which the handler refuses as an invalid request before the servicer sees it."""

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from credits.v1 import credits_pb2 as pb
from service.access.decoding import (
    UNDECODABLE,
    add_servicer,
    refusing_undecodable,
    refusing_undecodable_stream,
    tolerant_parser,
)
from service.ledger.failures import InvalidRequest


def test_bytes_that_parse_are_the_message() -> None:
    request = pb.GetBalanceRequest(account_id="acct-1")

    assert tolerant_parser(pb.GetBalanceRequest)(request.SerializeToString()) == request


@pytest.mark.parametrize("data", [bytes.fromhex("0a02fffe"), bytes.fromhex("0a0a6162"), b"\xff"])
def test_bytes_that_do_not_parse_are_undecodable(data: bytes) -> None:
    assert tolerant_parser(pb.GetBalanceRequest)(data) is UNDECODABLE


async def test_the_handler_refuses_an_undecodable_before_the_servicer() -> None:
    reached: list[object] = []

    async def servicer_method(request: object, ctx: object) -> str:
        reached.append(request)
        return "answer"

    handle = refusing_undecodable(servicer_method)

    with pytest.raises(InvalidRequest) as refused:
        await handle(UNDECODABLE, None)
    assert [v.field for v in refused.value.violations] == ["request"]
    assert reached == []
    assert await handle("a request", None) == "answer"


async def test_the_stream_handler_refuses_an_undecodable_before_the_servicer() -> None:
    reached: list[object] = []

    async def servicer_method(request: object, ctx: object) -> AsyncIterator[str]:
        reached.append(request)
        yield "answer"

    handle = refusing_undecodable_stream(servicer_method)

    with pytest.raises(InvalidRequest) as refused:
        [item async for item in handle(UNDECODABLE, None)]
    assert [v.field for v in refused.value.violations] == ["request"]
    assert reached == []
    assert [item async for item in handle("a request", None)] == ["answer"]


async def test_a_service_with_request_streams_is_refused_at_registration() -> None:
    server = grpc.aio.server()
    reflection = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    with pytest.raises(ValueError, match="streaming"):
        add_servicer(object(), reflection, server)
