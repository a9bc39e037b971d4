"""The client's exception classes agree with the service's error table: one class per
reason of service/ledger/failures.py (plus INTERNAL), the same reasons as the errors table
of docs/contract.md, and each class under the class of its code where failures are sorted
by code."""

import re
from pathlib import Path

import grpc

import credits_client
from credits_client import errors
from service.access.errors import INTERNAL_REASON, STATUS_OF
from service.ledger import failures

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
TABLE_ROW = re.compile(r"^\| ([A-Z_]+) \| ([A-Z_]+) \|", re.MULTILINE)


def contract_table() -> dict[str, str]:
    """reason → code, from the "Errors" table of docs/contract.md."""
    text = CONTRACT.read_text(encoding="utf-8")
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    return {reason: code for code, reason in TABLE_ROW.findall(section)}


def test_one_class_per_reason_of_the_service() -> None:
    service_reasons = {failure.reason for failure in failures.ALL} | {INTERNAL_REASON}
    assert set(errors.BY_REASON) == service_reasons


def test_the_contract_table_has_the_same_reasons() -> None:
    assert set(contract_table()) == set(errors.BY_REASON)


def test_each_class_sits_under_the_class_of_its_code() -> None:
    codes = {mapped.reason: mapped.code for mapped in STATUS_OF.values()}
    codes[INTERNAL_REASON] = grpc.StatusCode.INTERNAL
    for reason, error_class in errors.BY_REASON.items():
        assert reason == error_class.REASON
        assert contract_table()[reason] == codes[reason].name
        by_code = errors.BY_CODE.get(codes[reason])
        if by_code is not None:
            assert issubclass(error_class, by_code), reason


def test_every_class_is_exported() -> None:
    for error_class in (*errors.BY_REASON.values(), *errors.BY_CODE.values()):
        assert getattr(credits_client, error_class.__name__) is error_class
