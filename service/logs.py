"""The service's logs: the shared JSON lines (jsonlog), each carrying the request id of
the RPC it was written in."""

import logging
from collections.abc import Mapping

import jsonlog
from service import context


def rpc_context() -> Mapping[str, object]:
    return {"request_id": context.request_id.get()}


def configure(level: int = logging.INFO) -> None:
    jsonlog.configure(level, rpc_context)
