"""Structured logs for the service and the gateway alike: one JSON object per line on
stderr, with the same keys, so that one query reads both.

Every line has `ts`, `level`, `logger` and `msg`, what the process's context adds (the
service's request id), and what the call site passed with `extra=`, nothing else: no
request body, no header, no secret reaches a line by accident. An exception is written as
its class, the classes of its causes, its SQLSTATE if a database raised it, and its stack
(code locations only): never its message, which can quote data -- a database error's
message carries the statement's parameters, Stripe's errors the whole payload.
"""

import datetime
import json
import logging
import sys
import traceback
from collections.abc import Callable, Mapping

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# uvicorn repeats its message with terminal colours under this extra; `msg` has it.
_IGNORED_EXTRAS = frozenset({"color_message"})
# How many causes of an exception are named; a longer chain is cut.
EXCEPTION_CAUSES_MAX = 10

LineContext = Callable[[], Mapping[str, object]]


def no_context() -> Mapping[str, object]:
    return {}


def _class_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _cause(exc: BaseException) -> BaseException | None:
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def exception_fields(exc: BaseException) -> dict[str, object]:
    """What a line says about an exception: everything but its message (and its args)."""
    causes: list[BaseException] = []
    cause = _cause(exc)
    while cause is not None and len(causes) < EXCEPTION_CAUSES_MAX:
        if cause is exc or any(cause is seen for seen in causes):
            break  # a cycle
        causes.append(cause)
        cause = _cause(cause)
    fields: dict[str, object] = {"exc_type": _class_name(exc)}
    if causes:
        fields["exc_causes"] = [_class_name(c) for c in causes]
    sqlstates = [s for c in (exc, *causes) if isinstance(s := getattr(c, "sqlstate", None), str)]
    if sqlstates:
        fields["sqlstate"] = sqlstates[0]
    fields["stack"] = "".join(traceback.format_tb(exc.__traceback__))
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, context: LineContext = no_context) -> None:
        super().__init__()
        self._context = context

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._context(),
        }
        line.update(
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRIBUTES and key not in _IGNORED_EXTRAS
        )
        if record.exc_info and record.exc_info[1] is not None:
            line.update(exception_fields(record.exc_info[1]))
        # ASCII: any character a caller sent (a lone surrogate, a line separator) is
        # escaped, so that a line is always one valid line.
        return json.dumps(line, default=str)


def configure(level: int = logging.INFO, formatter: JsonFormatter | None = None) -> None:
    """Every logger of the process writes through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter or JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
