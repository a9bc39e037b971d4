"""When a failed call is sent again, and after how long.

Only failures that say "not now" are retried: UNAVAILABLE, DEADLINE_EXCEEDED and
RESOURCE_EXHAUSTED. Every RPC is safe to send twice -- Reserve, Grant and Revoke carry
the same idempotency key on every attempt, Confirm and Release of a settled reservation
return it again, reads change nothing -- so a retry never spends or grants twice.
"""

import random
from dataclasses import dataclass

import grpc

from credits_client.errors import CreditsError

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# A little spread on the service's own RetryInfo delay, so that callers refused together
# do not come back together.
RETRY_INFO_JITTER_FRACTION = 0.1


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, within a total time budget.

    Attempt n (n = 1 for the first retry) waits a random time between half and all of
    `backoff_initial_seconds * backoff_multiplier ** (n - 1)`, capped at
    `backoff_max_seconds`, or what the service's RetryInfo asks for. No attempt starts,
    and no wait is begun, that would end past `budget_seconds` from the first attempt;
    each attempt's deadline is also cut to what is left of the budget.
    """

    # About ten seconds of waits: enough for a restart of the service, or a failover.
    attempts_max: int = 10
    budget_seconds: float = 15.0
    backoff_initial_seconds: float = 0.1
    backoff_max_seconds: float = 2.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")
        if self.budget_seconds <= 0 or self.backoff_initial_seconds < 0:
            raise ValueError("budget_seconds must be positive, backoff_initial_seconds >= 0")
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("backoff_max_seconds must be at least backoff_initial_seconds")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be at least 1")

    def backoff_seconds(self, retry: int) -> float:
        """The wait before retry number `retry` (1 for the first), with jitter."""
        ceiling = min(
            self.backoff_max_seconds,
            self.backoff_initial_seconds * self.backoff_multiplier ** (retry - 1),
        )
        return random.uniform(ceiling / 2, ceiling)

    def wait_seconds(self, error: CreditsError, remaining_seconds: float) -> float | None:
        """How long to wait before sending the call again, or None to give up."""
        if error.code not in RETRYABLE_CODES or error.attempts >= self.attempts_max:
            return None
        if error.retry_delay_seconds is not None:
            wait = error.retry_delay_seconds * (1 + random.uniform(0, RETRY_INFO_JITTER_FRACTION))
        else:
            wait = self.backoff_seconds(error.attempts)
        return wait if wait < remaining_seconds else None


# One attempt only: for callers that have their own retry (e.g. a webhook that its
# sender delivers again).
NO_RETRY = RetryPolicy(attempts_max=1)
