"""Without a server: the client's enums cover the contract's, and the retry policy
waits what it promises (exponential backoff with jitter, RetryInfo honoured, a budget)."""

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits_client import (
    CreditsError,
    GrantSource,
    InvalidRequest,
    RateLimited,
    Reservation,
    ReservationStatus,
    RetryPolicy,
    Unavailable,
    channel,
)
from credits_client.results import Grant
from service.ledger import limits
from service.rpc import server


def test_the_enums_match_the_contract() -> None:
    assert {f"RESERVATION_STATUS_{s.name}" for s in ReservationStatus} == set(
        pb.ReservationStatus.keys()
    )
    assert {f"GRANT_SOURCE_{s.name}" for s in GrantSource} == set(pb.GrantSource.keys())


def test_a_value_newer_than_the_client_reads_as_unspecified() -> None:
    reservation = Reservation.from_message(pb.Reservation(status=99))  # type: ignore[arg-type]
    grant = Grant.from_message(pb.Grant(source=99))  # type: ignore[arg-type]

    assert reservation.status is ReservationStatus.UNSPECIFIED
    assert grant.source is GrantSource.UNSPECIFIED


def error(error_class: type[CreditsError], code: grpc.StatusCode, **fields: object) -> CreditsError:
    return error_class(code, "m", **fields)  # type: ignore[arg-type]


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    policy = RetryPolicy(backoff_initial_seconds=0.1, backoff_max_seconds=1.0)
    for retry, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        waits = [policy.backoff_seconds(retry) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1


def test_the_service_delay_is_waited_when_it_fits_the_budget() -> None:
    limited = error(RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay_seconds=2.0)
    policy = RetryPolicy()

    wait = policy.wait_seconds(limited, remaining_seconds=10)
    assert wait is not None
    assert 2.0 <= wait <= 2.2
    assert policy.wait_seconds(limited, remaining_seconds=1.5) is None


@pytest.mark.parametrize(
    ("failure", "retried"),
    [
        (error(Unavailable, grpc.StatusCode.UNAVAILABLE), True),
        (error(CreditsError, grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (error(RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED), True),
        (error(InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT), False),
        (error(CreditsError, grpc.StatusCode.INTERNAL), False),
        (error(Unavailable, grpc.StatusCode.UNAVAILABLE, attempts=3), False),
    ],
)
def test_only_not_now_failures_are_retried_within_the_attempts(
    failure: CreditsError, retried: bool
) -> None:
    policy = RetryPolicy(attempts_max=3)
    assert (policy.wait_seconds(failure, remaining_seconds=60) is not None) is retried


def test_a_policy_with_impossible_numbers_is_refused() -> None:
    for bad in (
        {"attempts_max": 0},
        {"budget_seconds": 0},
        {"backoff_initial_seconds": 3, "backoff_max_seconds": 2},
        {"backoff_multiplier": 0.5},
    ):
        with pytest.raises(ValueError, match="must be"):
            RetryPolicy(**bad)


def test_the_clients_pings_are_ones_the_service_accepts() -> None:
    # More frequent pings than the service permits get the connection closed.
    assert channel.KEEPALIVE_TIME_MS >= server.KEEPALIVE_MIN_PING_INTERVAL_MS
    assert channel.GRPC_MESSAGE_BYTES_MAX >= limits.GRPC_MESSAGE_BYTES_MAX
