"""The outermost interceptor, which sanitizes errors, and what every interceptor shares.

The chain (service.rpc.server), outermost first: SanitizeErrors → Authenticate
(authentication) → Authorize (authorization) → RateLimit (ratelimit). The inner ones refuse
a call by raising an error of access.errors, so that one place turns every failure into a
status. Each is an `Interceptor`: a handler wrapper, because a native
grpc.aio interceptor sees neither the request nor the ServicerContext (which holds the
peer certificate).
"""

import abc
import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from service.access import context, contract, errors
from service.ops import logs, metrics

log = logging.getLogger("credits.rpc")

REQUEST_ID_HEADER = "x-request-id"
# Orchestrator probes cannot present a caller's credentials.
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
MILLISECONDS_PER_SECOND = 1000


def credits_rpc(method_name: str) -> str | None:
    """The CreditsService RPC a full method name calls ("Reserve"), else None."""
    if method_name.startswith(contract.METHOD_PREFIX):
        return method_name.removeprefix(contract.METHOD_PREFIX)
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


class Interceptor(grpc.aio.ServerInterceptor, metaclass=abc.ABCMeta):  # type: ignore[misc]
    """One layer of the chain. `intercept` gets the request, the context and the full
    method name, and calls `method` (the next layer) to go on. The API of
    grpc-interceptor's AsyncServerInterceptor, except that the handler wrapping the next
    layer is built once per method rather than on every call: gRPC asks every
    interceptor for a handler on every RPC, which was a good part of an RPC's cost."""

    # Method name → this layer's handler. Only methods that have a handler are kept, so
    # the size is bounded by the methods the server serves.
    _handlers: dict[str, grpc.RpcMethodHandler] | None = None

    @abc.abstractmethod
    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        ctx: grpc.aio.ServicerContext,
        method_name: str,
    ) -> Any: ...

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method_name: str = handler_call_details.method
        if self._handlers is None:
            self._handlers = {}
        handler = self._handlers.get(method_name)
        if handler is None:
            inner = await continuation(handler_call_details)
            if inner is None:
                return None
            handler = self._handlers[method_name] = self._wrap(inner, method_name)
        return handler

    def _wrap(self, inner: grpc.RpcMethodHandler, method_name: str) -> grpc.RpcMethodHandler:
        """A handler of the same kind as `inner` that runs `inner` through this layer."""
        if inner.unary_unary:
            factory, behaviour = grpc.unary_unary_rpc_method_handler, inner.unary_unary
        elif inner.unary_stream:
            factory, behaviour = grpc.unary_stream_rpc_method_handler, inner.unary_stream
        elif inner.stream_unary:
            factory, behaviour = grpc.stream_unary_rpc_method_handler, inner.stream_unary
        else:
            factory, behaviour = grpc.stream_stream_rpc_method_handler, inner.stream_stream
        intercept = self.intercept
        wrapped: Callable[..., Any]
        if inner.response_streaming:

            async def streaming(request: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                # A layer may return the stream or await it into one; either way this
                # handler must itself be an async generator, as gRPC expects of streams.
                stream: Any = intercept(behaviour, request, ctx, method_name)
                if inspect.iscoroutine(stream):
                    stream = await stream
                if stream is not None:
                    async for item in stream:
                        yield item

            wrapped = streaming
        else:

            async def unary(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                return await intercept(behaviour, request, ctx, method_name)

            wrapped = unary
        return factory(
            wrapped,
            request_deserializer=inner.request_deserializer,
            response_serializer=inner.response_serializer,
        )


class SanitizeErrors(Interceptor):
    """Outermost: gives the RPC its request id (logs, `x-request-id` response header) and
    turns every exception into a status from service.access.errors. Anything unexpected is
    INTERNAL with a fixed message that refers to the request id; its detail is logged.
    When the RPC ends (a stream: when its last message is sent) it is counted, timed and,
    with CREDITS_ACCESS_LOG on, written to the access log."""

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        ctx: grpc.aio.ServicerContext,
        method_name: str,
    ) -> Any:
        request_id = uuid.uuid4().hex
        logs.request_id.set(request_id)
        await ctx.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
        started = time.perf_counter()
        try:
            response = await call_next(method, request_or_iterator, ctx)
        except Exception as exc:
            await self._abort(ctx, exc, method_name, started)
        except asyncio.CancelledError:
            finished(method_name, grpc.StatusCode.CANCELLED, started)
            raise
        if hasattr(response, "__aiter__"):
            return self._sanitized_stream(response, ctx, method_name, started)
        finished(method_name, grpc.StatusCode.OK, started)
        return response

    async def _sanitized_stream(
        self,
        stream: AsyncIterator[Any],
        ctx: grpc.aio.ServicerContext,
        method_name: str,
        started: float,
    ) -> AsyncIterator[Any]:
        try:
            async for item in stream:
                yield item
        except Exception as exc:
            await self._abort(ctx, exc, method_name, started)
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (or the server stops) in the middle of the stream.
            finished(method_name, grpc.StatusCode.CANCELLED, started)
            raise
        finished(method_name, grpc.StatusCode.OK, started)

    async def _abort(
        self, ctx: grpc.aio.ServicerContext, exc: Exception, method_name: str, started: float
    ) -> NoReturn:
        if isinstance(exc, grpc.aio.AbortError):
            # Aborted further in, with the status the context now holds.
            code = ctx.code()
            known = isinstance(code, grpc.StatusCode)
            finished(method_name, code if known else grpc.StatusCode.UNKNOWN, started)
            raise exc
        status = errors.for_known(exc)
        if status is not None:
            metrics.REFUSALS.labels(method_name, errors.STATUS_OF[type(exc)].reason).inc()
        if status is None:
            request_id = logs.request_id.get()
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
            # No stack: during an outage every call lands here, and the class of the
            # error and of its cause say all an operator needs.
            cause = exc.__cause__ or exc.__context__
            log.warning(
                "dependency unavailable",
                extra={
                    "method": method_name,
                    "error": type(exc).__name__,
                    "cause": type(cause).__name__ if cause is not None else None,
                },
            )
        finished(method_name, status.code, started)
        await ctx.abort_with_status(status)
        raise AssertionError("abort_with_status returned")


def finished(method_name: str, code: grpc.StatusCode, started: float) -> None:
    """Count and time an RPC that ended with `code`, and write its access log line (the
    formatter adds its request id)."""
    seconds = time.perf_counter() - started
    metrics.RPCS.labels(method_name, code.name).inc()
    metrics.RPC_SECONDS.labels(method_name).observe(seconds)
    if logs.access.isEnabledFor(logging.INFO):
        logs.access.info(
            "rpc",
            extra={
                "method": method_name,
                "caller": context.caller.get(),
                "code": code.name,
                "duration_ms": round(seconds * MILLISECONDS_PER_SECOND, 3),
            },
        )
