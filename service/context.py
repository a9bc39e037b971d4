"""What is known about the RPC being served, for every layer and log line of it."""

import contextvars
import time

from service.callers import Caller

# Set by the outermost interceptor for the whole RPC.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Set by the outermost interceptor when the client gave a deadline (time.monotonic()).
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
# Set by authentication: the calling service's name, which scopes idempotency keys.
caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)
# Set by authentication with `caller`: its entry in the callers file as it was then, so
# that authorization and rate limits judge the call by the same version of the file
# even when a reload replaces it meanwhile.
caller_entry: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "caller_entry", default=None
)


def seconds_left() -> float | None:
    """What remains of the client's deadline, None when it set none."""
    end = deadline.get()
    return None if end is None else end - time.monotonic()


def current_caller() -> str:
    """The authenticated caller; authentication runs before any servicer."""
    name = caller.get()
    if name is None:
        raise RuntimeError("no authenticated caller in this context")
    return name


def authenticated_caller() -> Caller:
    """The callers-file entry of the authenticated caller."""
    entry = caller_entry.get()
    if entry is None:
        raise RuntimeError("no authenticated caller in this context")
    return entry
