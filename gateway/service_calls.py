"""The gateway's calls to the service through `credits_client`: Grant and Revoke over mTLS as caller
`gateway`, each with a deadline and no retry of its own (Stripe delivers again), every
failure sorted into what the webhook answers."""

from dataclasses import dataclass
from enum import Enum

import grpc

import credits_client
from credits_client import CreditsError, secure_channel
from gateway.events import GrantCall, GrantSource, RevokeCall
from gateway.metrics import GatewayMetrics

# Two calls (a dispute won) must fit in the time Stripe waits for an answer.
SERVICE_CALL_TIMEOUT_SECONDS = 5.0
CHANNEL_CLOSE_GRACE_SECONDS = 5.0

_SOURCES = {
    GrantSource.PURCHASE: credits_client.GrantSource.PURCHASE,
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
class Granted:
    grant_id: str
    # The service answered with a grant made before this call: a delivery again.
    replayed: bool = False


@dataclass(frozen=True)
class Revoked:
    account_id: str
    revoked_amount: int
    unrecovered_amount: int
    restored_amount: int = 0
    cancelled_amount: int = 0


def open_channel(
    target: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, name_override: str = ""
) -> grpc.aio.Channel:
    """An mTLS channel to the service; must be made inside the running event loop."""
    return secure_channel(
        target,
        ca_pem=ca_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        server_name=name_override or None,
    )


def _failure(code: grpc.StatusCode) -> Failure:
    if code in _RETRY_LATER_CODES:
        return Failure.RETRY_LATER
    if code == grpc.StatusCode.NOT_FOUND:
        return Failure.NOT_FOUND
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return Failure.CONFLICT
    return Failure.MISCONFIGURED


class ServiceCalls:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        metrics: GatewayMetrics,
        timeout_seconds: float = SERVICE_CALL_TIMEOUT_SECONDS,
    ) -> None:
        # No retries: while the service is down, answer 503 at once instead of holding
        # Stripe's connection; Stripe delivers again.
        self._client = credits_client.CreditsClient(
            channel, timeout_seconds=timeout_seconds, retry=credits_client.NO_RETRY
        )
        self._metrics = metrics

    def _failed(self, rpc: str, error: CreditsError) -> ServiceError:
        self._metrics.service_call(rpc, error.code.name)
        return ServiceError(_failure(error.code), rpc, error.code.name, error.reason)

    async def grant(self, call: GrantCall) -> Granted:
        """The grant (the original one when the request is a replay)."""
        try:
            granted = await self._client.grant(
                call.account_id,
                call.amount,
                source=_SOURCES[call.source],
                idempotency_key=call.idempotency_key,
                external_ref=call.external_ref,
                description=call.description,
                metadata=dict(call.metadata),
            )
        except CreditsError as error:
            raise self._failed("Grant", error) from None
        self._metrics.service_call("Grant", "OK")
        return Granted(granted.grant_id, granted.replayed)

    async def revoke(self, call: RevokeCall) -> Revoked:
        try:
            revocation = await self._client.revoke(
                external_ref=call.external_ref,
                amount=call.amount,
                idempotency_key=call.idempotency_key,
                reason=call.reason,
                cumulative_series=call.cumulative_series,
                withdraw=call.withdraw,
                as_of=call.as_of,
            )
        except CreditsError as error:
            raise self._failed("Revoke", error) from None
        self._metrics.service_call("Revoke", "OK")
        return Revoked(
            account_id=revocation.grant.account_id,
            revoked_amount=revocation.revoked_amount,
            unrecovered_amount=revocation.unrecovered_amount,
            restored_amount=revocation.restored_amount,
            cancelled_amount=revocation.cancelled_amount,
        )
