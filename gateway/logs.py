"""Structured logs: one JSON object per line on stderr.

Only what a call site passes in `extra={"fields": {...}}` is added to a line, so nothing
reaches the log by accident: no request body, no signature header, no secret. Exceptions
are logged by type and stack only; their messages can quote data (Stripe's errors carry
the whole payload), so they are left out.
"""

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

FIELDS_ATTRIBUTE = "fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTRIBUTE, None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["stack"] = "".join(traceback.format_tb(record.exc_info[2]))
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
