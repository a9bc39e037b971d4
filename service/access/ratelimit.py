"""Rate limits per caller and RPC (from the callers file) and per caller and account on
Reserve, counted by the `limits` library: in this process, or in Redis
(`CREDITS_REDIS_URL`) so that every process and instance counts in one place. Settings
refuse several processes without Redis (service.settings): each would count alone, and a
client's one connection reaches one process, so no split of a limit is exact for it.

A call is counted against all of its limits or none: the limits after the first are
tested before any is hit, so that a call refused by its last limit has not spent its first
ones. The first needs no test of its own, since a hit tests its limit and counts in one
step. Each test or hit is a round trip to Redis, most of what the limiter costs: one per
call for most RPCs (one limit), three for Reserve (its caller's limit and its account's).

Sliding-window counters: two counters per key whatever the limit, where a moving window
would keep one entry per allowed call (20 000 for "20000/second"). A store that cannot
answer refuses the call (UNAVAILABLE): a limit that fails open is no limit.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from service.access import errors
from service.access.context import authenticated_caller, current_caller
from service.access.decoding import Undecodable
from service.access.interceptors import Interceptor, call_next, credits_rpc
from service.ledger import limits
from service.ops import metrics

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger("credits.ratelimit")

# A Redis next to the service answers in well under a millisecond; one that has not
# answered in half a second is down, and the caller's deadline is better spent on a
# retry than on waiting.
STORE_TIMEOUT_SECONDS = 0.5
# RetryInfo carries a positive delay even at a window's edge, so clients never spin.
RETRY_DELAY_MIN_SECONDS = 0.01
REDIS_KEY_PREFIX = "credits-ratelimit"
PER_ACCOUNT_RPC = "Reserve"


def _redis_storage(redis_url: str) -> "tuple[redis.asyncio.ConnectionPool, Storage]":
    """A pool of our own, so that the connections can be closed when the server stops,
    and the storage counting in it."""
    # Loaded only when used: the Redis client is a good part of a process's memory.
    import redis.asyncio  # noqa: PLC0415

    pool = redis.asyncio.ConnectionPool.from_url(
        redis_url,
        socket_timeout=STORE_TIMEOUT_SECONDS,
        socket_connect_timeout=STORE_TIMEOUT_SECONDS,
    )
    options: Any = pool  # `limits` types its options as scalars only
    storage = RedisStorage(
        f"async+{redis_url}",
        wrap_exceptions=True,
        implementation="redispy",
        key_prefix=REDIS_KEY_PREFIX,
        connection_pool=options,
    )
    return pool, storage


@dataclass(frozen=True)
class Check:
    """One call's limits under one key; `subject` names them to the client."""

    items: tuple[RateLimitItem, ...]
    subject: str
    key: tuple[str, ...]


class Limiter:
    """Counts calls against limits; raises RateLimited or RateLimitUnavailable."""

    def __init__(self, redis_url: str | None) -> None:
        self._pool: redis.asyncio.ConnectionPool | None = None
        storage: Storage
        if redis_url is None:
            storage = MemoryStorage()
        else:
            self._pool, storage = _redis_storage(redis_url)
        self._strategy = SlidingWindowCounterRateLimiter(storage)

    async def hit(self, *checks: Check) -> None:
        """Count one call against every limit of `checks`, or against none if one of
        them is spent."""
        counted = [(check, item) for check in checks for item in check.items]
        try:
            async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                for index, (check, item) in enumerate(counted[1:], start=1):
                    if not await self._strategy.test(item, *check.key):
                        await self._refuse_first_spent(counted[: index + 1])
                for check, item in counted:
                    # Another call may have taken the last unit since the test.
                    if not await self._strategy.hit(item, *check.key):
                        await self._refuse(check, item)
        except (StorageError, TimeoutError, OSError) as exc:
            raise errors.RateLimitUnavailable() from exc

    async def _refuse_first_spent(self, tested: list[tuple[Check, RateLimitItem]]) -> NoReturn:
        """Refuse naming the first of `tested` that is spent, as if each had been tested
        in order: the last one is (unless its window has moved since)."""
        for check, item in tested[:-1]:
            if not await self._strategy.test(item, *check.key):
                await self._refuse(check, item)
        await self._refuse(*tested[-1])

    async def _refuse(self, check: Check, item: RateLimitItem) -> NoReturn:
        stats = await self._strategy.get_window_stats(item, *check.key)
        delay = max(RETRY_DELAY_MIN_SECONDS, stats.reset_time - time.time())
        raise errors.RateLimited(check.subject, str(item), delay)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


class RateLimit(Interceptor):
    """Innermost: only calls that are authenticated and allowed are counted."""

    def __init__(self, limiter: Limiter, per_account: tuple[RateLimitItem, ...]) -> None:
        self._limiter = limiter
        self._per_account = per_account

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        ctx: grpc.aio.ServicerContext,
        method_name: str,
    ) -> Any:
        rpc = credits_rpc(method_name)
        if rpc is not None:
            caller = current_caller()
            checks = [
                Check(
                    authenticated_caller().limits_for(rpc),
                    f"caller:{caller}/{rpc}",
                    ("caller", caller, rpc),
                )
            ]
            if rpc == PER_ACCOUNT_RPC and not isinstance(request_or_iterator, Undecodable):
                # Longer ids are invalid and refused later; cutting them keeps the key
                # bounded while they are still counted. An undecodable request names no
                # account: its handler refuses it. Keyed by caller too, so that one
                # caller's runaway loop on an account cannot stop another's work on it.
                account = request_or_iterator.account_id[: limits.ACCOUNT_ID_CHARS_MAX]
                checks.append(
                    Check(self._per_account, f"account:{account}", ("account", caller, account))
                )
            try:
                await self._limiter.hit(*checks)
            except errors.RateLimited as exc:
                log.info("rate limited", extra={"method": method_name, "subject": exc.subject})
                metrics.RATE_LIMITED.labels(caller=caller, method=rpc).inc()
                raise
        return await call_next(method, request_or_iterator, ctx)
