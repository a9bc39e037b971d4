"""Admission: which calls the server takes on, decided as soon as a call's headers arrive.

gRPC counts a call against `maximum_concurrent_rpcs` when its headers arrive, before it
reads the request message and before any other layer runs; a unary call whose message
never comes would keep its place as long as its connection lives. So this layer, the
outermost, runs before the request is read:

- it tells callers from peers that are no caller (a health probe, or anyone who reached
  the port), by the credentials of the TLS handshake or the headers;
- each kind has a budget of concurrent calls of its own: callers
  CREDITS_MAX_CONCURRENT_RPCS; peers that are no caller ANONYMOUS_CALLS_MAX calls plus
  ANONYMOUS_WATCHES_MAX health Watch streams. A call beyond its budget is refused at
  once and so gives its place back at once: no number of non-callers can take a
  caller's place;
- callers' WatchEvents streams, which last, have a budget within theirs
  (CREDITS_EVENT_STREAMS_MAX), so that streams never hold every place of the calls
  that move credits;
- it reads a unary request itself and ends the call when the message has not come
  within REQUEST_MESSAGE_WAIT_SECONDS, so a half-open call frees its place.

gRPC's own `maximum_concurrent_rpcs` is then a backstop (`grpc_calls_max`): the budgets
plus room for the calls being refused.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn

import grpc

from service.access import contract, errors
from service.access.callers import LiveCallers
from service.access.decoding import REQUEST_FIELD
from service.ledger import failures
from service.ops import metrics
from service.rpc import health
from service.rpc.health import (
    ANONYMOUS,
    ANONYMOUS_WATCH_RETRY_SECONDS,
    ANONYMOUS_WATCH_SUBJECT,
    ANONYMOUS_WATCHES_MAX,
    WATCH_METHOD,
)
from service.settings import Settings

# A client sends a unary call's message with its headers, usually in the same packet;
# five seconds is a very slow network, and a call that waits longer is half-open.
REQUEST_MESSAGE_WAIT_SECONDS = 5.0
# Concurrent calls of peers that are no caller, beside their Watch streams: health
# Checks of the load balancers and probes of one instance, each answered at once; and
# the calls of strangers, which authentication refuses once their message is in.
ANONYMOUS_CALLS_MAX = 16
ANONYMOUS_CALLS_SUBJECT = "calls of peers that are no caller"
ANONYMOUS_CALL_RETRY_SECONDS = 1.0
EVENT_STREAMS_SUBJECT = "WatchEvents streams of this process"
# A place frees when another stream ends: consumers reconnect rarely, so not soon.
EVENT_STREAM_RETRY_SECONDS = 5.0
WATCH_EVENTS_RPC = "WatchEvents"
WATCH_EVENTS_METHOD = contract.full_method(WATCH_EVENTS_RPC)
# gRPC counts a call this layer refuses until the refusal has been sent, a few turns of
# the event loop. Room for this many such calls on top of the budgets: a connection's
# whole burst (grpc.max_concurrent_streams) and then some.
CALLS_BEING_REFUSED_MAX = 1024
# A stream of HTTP/2 per call: how many calls one connection may have open. A caller's
# client keeps one connection and may have its whole budget (CREDITS_MAX_CONCURRENT_RPCS)
# in flight on it: a call past this cap is refused by HTTP/2 itself (REFUSED_STREAM, seen
# by the client as UNAVAILABLE), so the cap must not be below that budget (checked at
# start-up). Strangers' streams beyond their budgets are refused at once by this layer.
STREAMS_PER_CONNECTION_MAX = 1024
# What gRPC's own concurrency limit answers: a caller over its budget gets the same
# answer as before this layer counted it (RESOURCE_EXHAUSTED without details, "overloaded").
CALLERS_OVER_BUDGET_MESSAGE = "Concurrent RPC limit exceeded!"


def grpc_calls_max(settings: Settings) -> int:
    """gRPC's `maximum_concurrent_rpcs`: every budget, and the calls being refused."""
    return (
        settings.max_concurrent_rpcs
        + ANONYMOUS_CALLS_MAX
        + ANONYMOUS_WATCHES_MAX
        + CALLS_BEING_REFUSED_MAX
    )


def check_limits(settings: Settings, connection_grace_seconds: float) -> None:
    """How these limits relate to each other and to the settings; checked at start-up."""
    # One connection's burst of refused calls must fit the room for them, or a single
    # stranger's connection could, for a moment, fill gRPC's count past the budgets.
    if STREAMS_PER_CONNECTION_MAX > CALLS_BEING_REFUSED_MAX:
        raise ValueError("STREAMS_PER_CONNECTION_MAX must be at most CALLS_BEING_REFUSED_MAX")
    # A half-open call must end by this layer, not by its connection's closing for age.
    if connection_grace_seconds <= REQUEST_MESSAGE_WAIT_SECONDS:
        raise ValueError("REQUEST_MESSAGE_WAIT_SECONDS must be below the connection age grace")
    if settings.max_concurrent_rpcs < 1:
        raise ValueError("CREDITS_MAX_CONCURRENT_RPCS must be at least 1")
    if settings.max_concurrent_rpcs > STREAMS_PER_CONNECTION_MAX:
        raise ValueError(
            "CREDITS_MAX_CONCURRENT_RPCS must be at most STREAMS_PER_CONNECTION_MAX, so that"
            " one caller's connection can carry its whole budget"
        )


class Budget:
    """A count of concurrent calls with a maximum."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.taken = 0

    @contextlib.contextmanager
    def place(self) -> Iterator[None]:
        """Hold one place while the block runs; raises Full when there is none."""
        if self.taken >= self.maximum:
            raise Full
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1


class Full(Exception):
    """A budget has no place left."""


class Admission(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The outermost layer (see the module's doc). Wraps each method's handler once."""

    def __init__(self, settings: Settings, callers: LiveCallers, *, certificates: bool) -> None:
        self._caller_of = health.caller_of(callers, certificates=certificates)
        self._callers = Budget(settings.max_concurrent_rpcs)
        self._anonymous = Budget(ANONYMOUS_CALLS_MAX)
        self._anonymous_watches = Budget(ANONYMOUS_WATCHES_MAX)
        self._event_streams = Budget(settings.event_streams_max)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method_name: str = handler_call_details.method
        handler = self._handlers.get(method_name)
        if handler is None:
            inner = await continuation(handler_call_details)
            if inner is None:
                return None
            handler = self._handlers[method_name] = self._wrap(inner, method_name)
        return handler

    @contextlib.asynccontextmanager
    async def _admitted(
        self, ctx: grpc.aio.ServicerContext, method_name: str
    ) -> AsyncIterator[None]:
        caller = self._caller_of(ctx)
        if caller is not None:
            budget = self._callers
        elif method_name == WATCH_METHOD:
            budget = self._anonymous_watches
        else:
            budget = self._anonymous
        # Only callers' streams: a stranger's is refused by authentication once its
        # message is in, and must not hold a caller's stream place until then.
        stream = caller is not None and method_name == WATCH_EVENTS_METHOD
        taking = budget  # the budget whose place is being taken: the one that is Full
        try:
            with budget.place():
                taking = self._event_streams
                with self._event_streams.place() if stream else contextlib.nullcontext():
                    yield
                    return
        except Full:
            pass
        await self._refuse(ctx, method_name, taking, caller)

    async def _refuse(
        self, ctx: grpc.aio.ServicerContext, method_name: str, budget: Budget, caller: str | None
    ) -> NoReturn:
        if budget is self._callers:
            await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, CALLERS_OVER_BUDGET_MESSAGE)
        if budget is self._event_streams and caller is not None:
            metrics.RATE_LIMITED.labels(caller, WATCH_EVENTS_RPC).inc()
            refusal = failures.RateLimited(
                EVENT_STREAMS_SUBJECT,
                f"{budget.maximum} concurrent streams",
                EVENT_STREAM_RETRY_SECONDS,
            )
            await _abort(ctx, errors.for_known(refusal))
        metrics.RATE_LIMITED.labels(ANONYMOUS, method_name).inc()
        if budget is self._anonymous_watches:
            refusal = failures.RateLimited(
                ANONYMOUS_WATCH_SUBJECT,
                f"{ANONYMOUS_WATCHES_MAX} concurrent streams",
                ANONYMOUS_WATCH_RETRY_SECONDS,
            )
        else:
            refusal = failures.RateLimited(
                ANONYMOUS_CALLS_SUBJECT,
                f"{ANONYMOUS_CALLS_MAX} concurrent calls",
                ANONYMOUS_CALL_RETRY_SECONDS,
            )
        await _abort(ctx, errors.for_known(refusal))

    def _wrap(self, inner: grpc.RpcMethodHandler, method_name: str) -> grpc.RpcMethodHandler:
        """The handler gRPC runs in place of `inner`: a unary request becomes a stream of
        requests, so that gRPC leaves reading it to this layer."""
        admitted = self._admitted
        behaviour: Callable[..., Any]
        if inner.response_streaming:

            async def streaming(requests: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with admitted(ctx, method_name):
                    if inner.request_streaming:
                        responses = inner.stream_stream(requests, ctx)
                    else:
                        responses = inner.unary_stream(await _request(ctx), ctx)
                    async for item in responses:
                        yield item

            behaviour, factory = streaming, grpc.stream_stream_rpc_method_handler
        else:

            async def unary(requests: Any, ctx: grpc.aio.ServicerContext) -> Any:
                async with admitted(ctx, method_name):
                    if inner.request_streaming:
                        return await inner.stream_unary(requests, ctx)
                    return await inner.unary_unary(await _request(ctx), ctx)

            behaviour, factory = unary, grpc.stream_unary_rpc_method_handler
        return factory(
            behaviour,
            request_deserializer=inner.request_deserializer,
            response_serializer=inner.response_serializer,
        )


async def _request(ctx: grpc.aio.ServicerContext) -> Any:
    """The one request message of a unary call, if it comes in time."""
    try:
        async with asyncio.timeout(REQUEST_MESSAGE_WAIT_SECONDS):
            request = await ctx.read()
    except TimeoutError:
        await _abort(
            ctx,
            errors.build(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                failures.StoreTimeout.reason,  # the one reason of a deadline that ran out
                "the request message did not arrive in time",
            ),
        )
    if request is grpc.aio.EOF:
        missing = failures.InvalidRequest([failures.FieldViolation(REQUEST_FIELD, "is missing")])
        await _abort(ctx, errors.for_known(missing))
    return request


async def _abort(ctx: grpc.aio.ServicerContext, status: grpc.Status | None) -> NoReturn:
    if status is None:
        raise AssertionError("a refusal of this layer is missing from the error table")
    await ctx.abort_with_status(status)
    raise AssertionError("abort_with_status returned")
