"""The gateway's only way to the credits service: Grant and Revoke over mTLS as caller
`gateway`, each with a deadline, every failure sorted into what the webhook answers."""

from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credits.v1 import credits_pb2, credits_pb2_grpc
from gateway.events import GrantCall, GrantSource, RevokeCall
from gateway.metrics import GatewayMetrics

# Two calls (a dispute won) must fit in the time Stripe waits for an answer.
SERVICE_CALL_TIMEOUT_SECONDS = 5.0
# Answers are a few hundred bytes; nothing larger is expected either way.
GRPC_MESSAGE_BYTES_MAX = 256 * 1024
# After the service restarts, reconnect within seconds rather than gRPC's default of up
# to two minutes, so Stripe's next retry finds it.
RECONNECT_BACKOFF_INITIAL_MS = 200
RECONNECT_BACKOFF_MAX_MS = 2000
CHANNEL_CLOSE_GRACE_SECONDS = 5.0

_SOURCES = {
    GrantSource.PURCHASE: credits_pb2.GRANT_SOURCE_PURCHASE,
}


class Failure(Enum):
    RETRY_LATER = "retry_later"  # the service is down, slow or overloaded: 503
    NOT_FOUND = "not_found"  # no grant for that payment (yet)
    CONFLICT = "conflict"  # ALREADY_EXISTS: done before, with a different request
    MISCONFIGURED = "misconfigured"  # refused: a bug or a configuration error: 500


_RETRY_LATER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class ServiceError(Exception):
    """A call the service did not accept. Carries the code and the ErrorInfo reason,
    never the service's message (not needed, and not ours to copy into logs)."""

    def __init__(self, failure: Failure, rpc: str, code: str, reason: str) -> None:
        super().__init__(f"{rpc} failed: {code} {reason}".strip())
        self.failure, self.rpc, self.code, self.reason = failure, rpc, code, reason


@dataclass(frozen=True)
class Revoked:
    account_id: str
    revoked_amount: int
    unrecovered_amount: int
    restored_amount: int = 0
    cancelled_amount: int = 0


def open_channel(
    target: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, name_override: str = ""
) -> Any:
    """An mTLS channel to the service; must be made inside the running event loop."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
    ]
    if name_override:
        options.append(("grpc.ssl_target_name_override", name_override))
    return grpc.aio.secure_channel(target, credentials, options=options)


def _reason(error: grpc.aio.AioRpcError) -> str:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # code or message inconsistent with the rich status
        return ""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def _failure(code: Any) -> Failure:
    if code in _RETRY_LATER_CODES:
        return Failure.RETRY_LATER
    if code == grpc.StatusCode.NOT_FOUND:
        return Failure.NOT_FOUND
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return Failure.CONFLICT
    return Failure.MISCONFIGURED


class CreditsClient:
    def __init__(
        self,
        channel: Any,
        metrics: GatewayMetrics,
        timeout_seconds: float = SERVICE_CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._stub = credits_pb2_grpc.CreditsServiceStub(channel)
        self._metrics = metrics
        self._timeout_seconds = timeout_seconds

    async def _call(self, rpc: str, method: Any, request: Any) -> Any:
        try:
            # wait_for_ready=False: while the service is down, fail at once (and answer
            # 503) instead of holding Stripe's connection until the deadline.
            response = await method(request, timeout=self._timeout_seconds, wait_for_ready=False)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            self._metrics.service_call(rpc, code.name)
            raise ServiceError(_failure(code), rpc, code.name, _reason(error)) from None
        self._metrics.service_call(rpc, "OK")
        return response

    async def grant(self, call: GrantCall) -> str:
        """The grant's id (the original one when the request is a replay)."""
        request = credits_pb2.GrantRequest(
            account_id=call.account_id,
            amount=call.amount,
            source=_SOURCES[call.source],
            idempotency_key=call.idempotency_key,
            external_ref=call.external_ref,
            description=call.description,
            metadata=dict(call.metadata),
        )
        response = await self._call("Grant", self._stub.Grant, request)
        return str(response.grant.grant_id)

    async def revoke(self, call: RevokeCall) -> Revoked:
        request = credits_pb2.RevokeRequest(
            external_ref=call.external_ref,
            amount=call.amount,
            idempotency_key=call.idempotency_key,
            reason=call.reason,
            cumulative_series=call.cumulative_series,
            withdraw=call.withdraw,
        )
        response = await self._call("Revoke", self._stub.Revoke, request)
        return Revoked(
            account_id=str(response.grant.account_id),
            revoked_amount=int(response.revoked_amount),
            unrecovered_amount=int(response.unrecovered_amount),
            restored_amount=int(response.restored_amount),
            cancelled_amount=int(response.cancelled_amount),
        )
