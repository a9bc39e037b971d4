"""Who is calling: what authentication found, for authorization, rate limits and the
servicer (which scopes idempotency keys by caller). The request id lives with the logs
(service.ops.logs)."""

import contextvars

from service.access.callers import Caller

# Set by authentication: the calling service's name, which scopes idempotency keys.
caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)
# Set by authentication with `caller`: its entry in the callers file as it was then, so
# that authorization and rate limits judge the call by the same version of the file
# even when a reload replaces it meanwhile.
caller_entry: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "caller_entry", default=None
)


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
