"""What is known about the RPC being served, for every layer and log line of it."""

import contextvars

# Set by the outermost interceptor for the whole RPC.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Set by authentication: the calling service's name, which scopes idempotency keys.
caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> str:
    """The authenticated caller; authentication runs before any servicer."""
    name = caller.get()
    if name is None:
        raise RuntimeError("no authenticated caller in this context")
    return name
