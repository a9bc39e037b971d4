"""The interceptor chain, outermost first: sanitize errors → authenticate.

Built on grpc-interceptor's async handler wrapper, because a native grpc.aio interceptor
sees neither the request nor the ServicerContext (which holds the peer certificate).
"""

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from grpc_interceptor.server import AsyncServerInterceptor

from service import context, errors

log = logging.getLogger("credits.rpc")

REQUEST_ID_HEADER = "x-request-id"
UNAUTHENTICATED_MESSAGE = "missing or invalid credentials"


async def _call(method: Callable[..., Any], request: Any, ctx: grpc.aio.ServicerContext) -> Any:
    """Invoke the next handler; a response-streaming one returns an async generator,
    which must be passed on, not awaited."""
    response = method(request, ctx)
    if hasattr(response, "__aiter__"):
        return response
    return await response


class SanitizeErrors(AsyncServerInterceptor):
    """Outermost: gives the RPC its request id (logs, `x-request-id` response header) and
    turns every exception into a status from service.errors. Anything unexpected is
    INTERNAL with a fixed message that refers to the request id; its detail is logged."""

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        ctx: grpc.aio.ServicerContext,
        method_name: str,
    ) -> Any:
        request_id = uuid.uuid4().hex
        context.request_id.set(request_id)
        await ctx.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
        try:
            response = await _call(method, request_or_iterator, ctx)
        except Exception as exc:
            await self._abort(ctx, exc, method_name)
        if hasattr(response, "__aiter__"):
            return self._sanitized_stream(response, ctx, method_name)
        return response

    async def _sanitized_stream(
        self, stream: AsyncIterator[Any], ctx: grpc.aio.ServicerContext, method_name: str
    ) -> AsyncIterator[Any]:
        try:
            async for item in stream:
                yield item
        except Exception as exc:
            await self._abort(ctx, exc, method_name)

    async def _abort(
        self, ctx: grpc.aio.ServicerContext, exc: Exception, method_name: str
    ) -> NoReturn:
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        status = errors.for_known(exc)
        if status is None:
            log.error("unexpected error", extra={"method": method_name}, exc_info=exc)
            status = errors.internal(context.request_id.get())
        elif status.code is grpc.StatusCode.UNAVAILABLE:
            log.warning("database unavailable", extra={"method": method_name}, exc_info=exc)
        await ctx.abort_with_status(status)
        raise AssertionError("abort_with_status returned")


def peer_identity(ctx: grpc.aio.ServicerContext) -> str | None:
    """The caller named by its client certificate: the first subject alternative name,
    else the common name. gRPC has already checked the chain against the CA."""
    auth = ctx.auth_context()
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        values = auth.get(key)
        if values:
            return bytes(values[0]).decode("utf-8", "replace")
    return None


class Authenticate(AsyncServerInterceptor):
    """Names the caller from its client certificate; no name is UNAUTHENTICATED."""

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        ctx: grpc.aio.ServicerContext,
        method_name: str,
    ) -> Any:
        identity = peer_identity(ctx)
        if identity is None:
            await ctx.abort_with_status(
                errors.build(
                    grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", UNAUTHENTICATED_MESSAGE
                )
            )
        context.caller.set(identity)
        return await _call(method, request_or_iterator, ctx)
