"""The contract's RPCs, read from the generated descriptor of `credits.v1.CreditsService`:
the one list of methods. Authorization, the dev callers, the chaos fuzzer and the tests
all take it from here, so that a new RPC in protos/ needs no list edited by hand."""

from google.protobuf import descriptor, message, message_factory

from credits.v1 import credits_pb2

SERVICE: descriptor.ServiceDescriptor = credits_pb2.DESCRIPTOR.services_by_name["CreditsService"]
# "credits.v1.CreditsService", as health checks and full method names spell it.
SERVICE_NAME: str = SERVICE.full_name
METHOD_PREFIX = f"/{SERVICE_NAME}/"
# In the contract's order.
RPC_NAMES: tuple[str, ...] = tuple(method.name for method in SERVICE.methods)


def request_type(rpc: str) -> type[message.Message]:
    """The request message class of one RPC ("Reserve" → ReserveRequest)."""
    return message_factory.GetMessageClass(SERVICE.methods_by_name[rpc].input_type)


def response_type(rpc: str) -> type[message.Message]:
    """The response message class of one RPC."""
    return message_factory.GetMessageClass(SERVICE.methods_by_name[rpc].output_type)


def full_method(rpc: str) -> str:
    """The path a call of `rpc` travels on ("/credits.v1.CreditsService/Reserve")."""
    return METHOD_PREFIX + rpc
