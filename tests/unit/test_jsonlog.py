"""The one log format of the service and the gateway: a JSON object per line with fixed
keys, what the call site passed, and an exception by its class and stack only."""

import json
import logging

from jsonlog import JsonFormatter

SECRET = "whsec_never_in_a_log_0123"


def formatted(
    formatter: JsonFormatter, *, exc: BaseException | None = None, **extra: object
) -> dict[str, object]:
    record = logging.makeLogRecord(
        {
            "name": "credits.test",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "msg": "it %s",
            "args": ("failed",),
        }
    )
    record.__dict__.update(extra)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    line: dict[str, object] = json.loads(formatter.format(record))
    return line


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


class DriverError(Exception):
    sqlstate = "23514"


def test_a_line_has_the_fixed_keys_the_context_and_the_extras() -> None:
    line = formatted(
        JsonFormatter(lambda: {"request_id": "r-1"}), method="/x/Y", color_message="\x1b[1m"
    )

    assert set(line) == {"ts", "level", "logger", "msg", "request_id", "method"}
    assert (line["level"], line["logger"], line["msg"]) == ("error", "credits.test", "it failed")
    assert (line["request_id"], line["method"]) == ("r-1", "/x/Y")


def test_an_exception_is_its_class_causes_sqlstate_and_stack_never_its_message() -> None:
    try:
        try:
            raise DriverError(f"value {SECRET} violates a check")
        except DriverError as driver:
            raise RuntimeError(f"[parameters: ('{SECRET}',)]") from driver
    except RuntimeError as exc:
        line = formatted(JsonFormatter(), exc=exc)

    assert line["exc_type"] == "RuntimeError"
    assert line["exc_causes"] == [f"{__name__}.DriverError"]
    assert line["sqlstate"] == "23514"
    assert "raise RuntimeError" in str(line["stack"])
    assert SECRET not in json.dumps(line)


def test_a_line_is_one_ascii_line_whatever_it_carries() -> None:
    text = JsonFormatter().format(logging.makeLogRecord({"msg": "x", "value": "a\u2028b\ud800c\n"}))

    assert text.isascii()
    assert "\n" not in text
    assert json.loads(text)["value"] == "a\u2028b\ud800c\n"


def test_a_cycle_of_causes_ends() -> None:
    first, second = raised(ValueError("1")), raised(KeyError("2"))
    first.__cause__, second.__cause__ = second, first

    assert formatted(JsonFormatter(), exc=first)["exc_causes"] == ["KeyError"]
