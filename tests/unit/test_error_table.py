"""The one error list and the status table derived from it."""

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from service.access import errors
from service.ledger import failures
from service.ledger.failures import FieldViolation


def error_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    return info


def instance(failure: type[failures.Failure]) -> failures.Failure:
    if failure is failures.InvalidRequest:
        return failures.InvalidRequest([FieldViolation("amount", "bad")])
    if failure is failures.RateLimited:
        return failures.RateLimited("caller:x/Reserve", "1 per 1 second", 0.5)
    return failure()


@pytest.mark.parametrize("failure", failures.ALL)
def test_every_failure_leaves_with_its_code_reason_and_fixed_message(
    failure: type[failures.Failure],
) -> None:
    status = errors.for_known(instance(failure))
    assert status is not None
    assert status.code is grpc.StatusCode[failure.code]
    assert status.details == failure.message
    info = error_info(status)
    assert (info.domain, info.reason) == ("credits.v1", failure.reason)
    # Fixed sentences: no amount, balance or id can be in them.
    assert not any(ch.isdigit() for ch in failure.message)


def test_reasons_and_sqlstates_are_unique() -> None:
    # Bad fields decided in the database (GrantExpiryPassed, PricedAmountTooLarge) answer
    # as InvalidRequest, with its reason.
    reasons = [
        f.reason
        for f in failures.ALL
        if f is failures.InvalidRequest or not issubclass(f, failures.InvalidRequest)
    ]
    assert len(reasons) == len(set(reasons))
    sqlstates = [f.sqlstate for f in failures.ALL if f.sqlstate]
    assert len(sqlstates) == len(set(sqlstates))


def test_anything_else_is_unknown_to_the_table_and_internal_names_the_request() -> None:
    assert errors.for_known(ValueError("SELECT secret FROM x")) is None
    status = errors.internal("abc123")
    assert (status.code, status.details) == (
        grpc.StatusCode.INTERNAL,
        "internal error (ref abc123)",
    )
