"""Connection limits uvicorn does not have: a deadline for a request's head and one for
its body, a cap per peer, and a budget for connections that have not finished sending a
request, which new connections take from the oldest.

uvicorn (0.55) times a connection out only after a response (`timeout_keep_alive`), and
its `limit_concurrency` counts open connections, so a few hundred sockets that never
finish a request answer every genuine delivery 503 for as long as they stay open. Here a
connection that has not sent a whole request is "unfinished"; unfinished connections
are cut at their deadline, and when there are too many, the oldest is closed for the
newcomer. A genuine delivery sends its head and its few KiB of body at once, so it
stays unfinished for a moment only, and an attacker's idle sockets cannot hold its place.
"""

import asyncio
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ConnectionLimits:
    # From accept (or the end of the previous response) to the last byte of the head.
    head_timeout_seconds: float
    # From the end of the head to the last byte of the body.
    body_timeout_seconds: float
    # Open connections in all; beyond it a new connection is closed at once.
    connections_max: int
    # Open connections of one peer address; beyond it its new connection is closed.
    peer_connections_max: int
    # Connections still sending a request (or idle); beyond it the oldest one is closed.
    unfinished_connections_max: int


@dataclass
class _Registry:
    """What the connections of one server share."""

    limits: ConnectionLimits
    peers: Counter[str] = field(default_factory=Counter)
    # Insertion order is age: the first is the one waiting longest.
    unfinished: "OrderedDict[GuardedH11Protocol, None]" = field(default_factory=OrderedDict)
    open_connections: int = 0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of `ConnectionLimits`."""

    registry: _Registry  # set on the subclass `guarded_protocol` makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer = ""
        self._counted = False
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: object = None  # the h11 state the deadline was armed for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        registry = self.registry
        self._peer = self.client[0] if self.client else ""
        if (
            registry.open_connections >= registry.limits.connections_max
            or registry.peers[self._peer] >= registry.limits.peer_connections_max
        ):
            transport.abort()
            return
        self._counted = True
        registry.open_connections += 1
        registry.peers[self._peer] += 1
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            registry = self.registry
            registry.open_connections -= 1
            registry.peers[self._peer] -= 1
            if registry.peers[self._peer] <= 0:
                del registry.peers[self._peer]
            self._finished()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        """Arm the deadline of the part of the request still to come, or none once the
        whole request is in (the app's own time is bounded by its service deadlines)."""
        if not self._counted or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._unfinished(state, self.registry.limits.head_timeout_seconds)
        elif state is h11.SEND_BODY:
            self._unfinished(state, self.registry.limits.body_timeout_seconds)
        else:
            self._finished()

    def _unfinished(self, state: object, timeout_seconds: float) -> None:
        if self._deadline_for is state:
            return  # still the same part: its deadline runs on, a trickle does not reset it
        self._cancel_deadline()
        self._deadline_for = state
        self._deadline = self.loop.call_later(timeout_seconds, self._cut)
        unfinished = self.registry.unfinished
        if self not in unfinished:
            unfinished[self] = None
            while len(unfinished) > self.registry.limits.unfinished_connections_max:
                oldest = next(iter(unfinished))
                oldest._cut()

    def _finished(self) -> None:
        self._cancel_deadline()
        self._deadline_for = None
        self.registry.unfinished.pop(self, None)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _cut(self) -> None:
        """Close without an answer: the client is not sending, so it would not read one.
        A request half read sees a disconnect; the app answers nothing to it."""
        self._finished()
        self.transport.abort()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class of its own per server, so two servers never share a budget."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"registry": _Registry(limits)})
