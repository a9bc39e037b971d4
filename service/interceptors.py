"""The outermost interceptor, which sanitizes errors, and what every interceptor shares.

The chain (service.server), outermost first: SanitizeErrors → Authenticate (service.auth)
→ Authorize (service.authorization) → RateLimit (service.ratelimit). The inner ones
refuse a call by raising an error of service.errors, so that one place turns every
failure into a status. Built on grpc-interceptor's async handler wrapper, because a
native grpc.aio interceptor sees neither the request nor the ServicerContext (which
holds the peer certificate).
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from grpc_interceptor.server import AsyncServerInterceptor

from credits.v1 import credits_pb2
from service import context, errors, metrics

log = logging.getLogger("credits.rpc")

REQUEST_ID_HEADER = "x-request-id"
CREDITS_METHOD_PREFIX = (
    "/" + credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].full_name + "/"
)
# Orchestrator probes cannot present a caller's credentials.
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


def credits_rpc(method_name: str) -> str | None:
    """The CreditsService RPC a full method name calls ("Reserve"), else None."""
    if method_name.startswith(CREDITS_METHOD_PREFIX):
        return method_name.removeprefix(CREDITS_METHOD_PREFIX)
    return None


def is_health(method_name: str) -> bool:
    return method_name.startswith(HEALTH_METHOD_PREFIX)


async def call_next(method: Callable[..., Any], request: Any, ctx: grpc.aio.ServicerContext) -> Any:
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
        remaining = ctx.time_remaining()
        if remaining is not None:
            context.deadline.set(time.monotonic() + remaining)
        await ctx.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
        started = time.perf_counter()
        try:
            response = await call_next(method, request_or_iterator, ctx)
        except Exception as exc:
            await self._abort(ctx, exc, method_name)
        except asyncio.CancelledError:
            metrics.RPCS.labels(method_name, grpc.StatusCode.CANCELLED.name).inc()
            raise
        finally:
            metrics.RPC_SECONDS.labels(method_name).observe(time.perf_counter() - started)
        if hasattr(response, "__aiter__"):
            return self._sanitized_stream(response, ctx, method_name)
        metrics.RPCS.labels(method_name, grpc.StatusCode.OK.name).inc()
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
            request_id = context.request_id.get()
            # The formatter writes the error's class and stack, never its message: a
            # database error's message quotes the statement's parameters.
            log.error(
                "unexpected error",
                extra={
                    "method": method_name,
                    "request_id": request_id,
                    "caller": context.caller.get(),
                },
                exc_info=exc,
            )
            status = errors.internal(request_id)
        elif status.code is grpc.StatusCode.UNAVAILABLE:
            log.warning(
                "dependency unavailable",
                extra={"method": method_name, "error": type(exc).__name__},
                exc_info=exc,
            )
        metrics.RPCS.labels(method_name, status.code.name).inc()
        await ctx.abort_with_status(status)
        raise AssertionError("abort_with_status returned")
