"""The service's logs: the JSON lines the gateway writes too (jsonlog), each carrying the
request id of the RPC it was written in and, in a worker of several processes, the
worker's index."""

import contextvars
import logging
from collections.abc import Mapping

import jsonlog

# Set by the outermost interceptor for the whole RPC; "-" outside any RPC.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# One line per RPC (service.access.interceptors), written only when CREDITS_ACCESS_LOG is on.
access = logging.getLogger("credits.access")
access.disabled = True


class JsonFormatter(jsonlog.JsonFormatter):
    """`worker`: the index of this process among a supervisor's workers, which every line
    names (a reload, for one, happens in each worker); None when serving alone."""

    def __init__(self, worker: int | None = None) -> None:
        process = {} if worker is None else {"worker": worker}

        def line_context() -> Mapping[str, object]:
            return {"request_id": request_id.get(), **process}

        super().__init__(line_context)


def configure(level: int = logging.INFO, *, worker: int | None = None) -> None:
    jsonlog.configure(level, JsonFormatter(worker))


def enable_access_log(enabled: bool) -> None:
    access.disabled = not enabled
