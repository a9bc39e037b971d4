"""Registers a servicer so that a request whose bytes do not parse is refused like any
other invalid request: INVALID_ARGUMENT with its ErrorInfo and request id, after the
caller is authenticated and authorized.

gRPC parses a request before any interceptor runs, and a parse error (a string field that
is not UTF-8, a truncated message) would end the call as UNKNOWN with the parser's text,
outside the interceptors. Here the parser never raises: it hands the interceptors an
`Undecodable` in place of the message, and the handler refuses it before the servicer.
"""

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from service.ledger.failures import FieldViolation, InvalidRequest

REQUEST_FIELD = "request"


class Undecodable:
    """Stands in for a request message whose bytes did not parse. It has no fields, so
    anything that reads one before the refusal fails loudly instead of reading defaults."""

    __slots__ = ()


UNDECODABLE = Undecodable()


def tolerant_parser(message_class: type[message.Message]) -> Callable[[bytes], object]:
    def parse(data: bytes) -> object:
        try:
            return message_class.FromString(data)
        except message.DecodeError:
            return UNDECODABLE

    return parse


def _refuse_undecodable(request: object) -> None:
    if isinstance(request, Undecodable):
        raise InvalidRequest(
            [FieldViolation(REQUEST_FIELD, "must be a valid encoding, strings in UTF-8")]
        )


def refusing_undecodable(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def handle(request: object, ctx: grpc.aio.ServicerContext) -> Any:
        _refuse_undecodable(request)
        return await behaviour(request, ctx)

    return handle


def refusing_undecodable_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """The same for a server-streaming RPC: its one request is parsed like a unary one."""

    async def handle(request: object, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        _refuse_undecodable(request)
        async for response in behaviour(request, ctx):
            yield response

    return handle


def add_servicer(servicer: object, service: ServiceDescriptor, server: grpc.aio.Server) -> None:
    """What the generated `add_<Service>Servicer_to_server` does, with tolerant parsers.
    Unary requests only (a response may stream): a request stream would need its parser
    applied per message."""
    streaming = [m.full_name for m in service.methods if m.client_streaming]
    if streaming:
        raise ValueError(f"streaming RPCs are not supported here: {', '.join(streaming)}")
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                refusing_undecodable_stream(behaviour),
                request_deserializer=tolerant_parser(request_class),
                response_serializer=response_class.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                refusing_undecodable(behaviour),
                request_deserializer=tolerant_parser(request_class),
                response_serializer=response_class.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
