"""Authentication: which caller of the callers file is making this call.

In mtls mode the caller is named by its client certificate, which gRPC has already
checked against the CA during the handshake; otherwise by the secret it sends as
`x-api-key`. Health is open: orchestrator probes present no caller credentials.
"""

import logging
from collections.abc import Callable
from typing import Any

import grpc

from service.access import context, errors
from service.access.callers import Caller, LiveCallers
from service.access.interceptors import Interceptor, call_next, is_health
from service.ops import metrics

log = logging.getLogger("credits.auth")

API_KEY_HEADER = "x-api-key"


def peer_identity(ctx: grpc.aio.ServicerContext) -> str | None:
    """The caller named by its client certificate: the first subject alternative name,
    else the common name."""
    auth = ctx.auth_context()
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        values = auth.get(key)
        if values:
            return bytes(values[0]).decode("utf-8", "replace")
    return None


def api_key(ctx: grpc.aio.ServicerContext) -> str | None:
    """The one `x-api-key` value; several are as good as none, since it is unclear
    which one the caller meant."""
    values = [v for k, v in ctx.invocation_metadata() or () if k == API_KEY_HEADER]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    return values[0]


class Authenticate(Interceptor):
    """Sets the caller of the RPC; unknown or missing credentials are UNAUTHENTICATED."""

    def __init__(self, callers: LiveCallers, *, certificates: bool) -> None:
        self._callers = callers
        self._certificates = certificates

    def _identify(self, ctx: grpc.aio.ServicerContext) -> tuple[Caller | None, str]:
        """(the caller, or None with why not)."""
        callers = self._callers.current
        if self._certificates:
            name = peer_identity(ctx)
            if name is None:
                return None, "certificate names no caller"
            caller = callers.by_certificate_name.get(name)
            return caller, "unknown certificate name"
        key = api_key(ctx)
        if key is None:
            return None, "no api key"
        return callers.for_api_key(key), "unknown api key"

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        ctx: grpc.aio.ServicerContext,
        method_name: str,
    ) -> Any:
        if not is_health(method_name):
            caller, why_not = self._identify(ctx)
            if caller is None:
                # The peer address helps find the misconfigured client; the credential
                # itself is never logged.
                log.warning(
                    "authentication failed",
                    extra={"method": method_name, "why": why_not, "peer": ctx.peer()},
                )
                metrics.AUTHENTICATION_FAILURES.inc()
                raise errors.Unauthenticated()
            context.caller.set(caller.name)
            context.caller_entry.set(caller)
        return await call_next(method, request_or_iterator, ctx)
