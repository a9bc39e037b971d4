"""The service's logs: the JSON lines the gateway writes too (jsonlog), each carrying the
request id of the RPC it was written in."""

import contextvars
import logging
from collections.abc import Mapping

import jsonlog

# Set by the outermost interceptor for the whole RPC; "-" outside any RPC.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def rpc_context() -> Mapping[str, object]:
    return {"request_id": request_id.get()}


class JsonFormatter(jsonlog.JsonFormatter):
    def __init__(self) -> None:
        super().__init__(rpc_context)


def configure(level: int = logging.INFO) -> None:
    jsonlog.configure(level, JsonFormatter())
