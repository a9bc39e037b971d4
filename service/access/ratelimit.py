"""Rate limits per caller and RPC (from the callers file) and per account on Reserve,
counted by the `limits` library: in this process by default, or in Redis
(`CREDITS_REDIS_URL`) so that every instance shares one count.

Without Redis, the processes of one service (service.processes) cannot share a count:
each enforces its share of every limit (the limit divided by the number of processes,
rounded down, at least 1), so that together they never allow more than the limit. A
caller whose calls all reach one process (one connection) gets that share only.

Sliding-window counters: two counters per key whatever the limit, where a moving window
would keep one entry per allowed call (20 000 for "20000/second"). A store that cannot
answer refuses the call (UNAVAILABLE): a limit that fails open is no limit.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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


class Limiter:
    """Counts calls against limits; raises RateLimited or RateLimitUnavailable."""

    def __init__(self, redis_url: str | None, *, sharing: int = 1) -> None:
        self._pool: redis.asyncio.ConnectionPool | None = None
        # Counted here alone, with (sharing - 1) other processes counting the same calls.
        self._sharing = sharing if redis_url is None else 1
        self._shares: dict[RateLimitItem, RateLimitItem] = {}
        storage: Storage
        if redis_url is None:
            storage = MemoryStorage()
        else:
            self._pool, storage = _redis_storage(redis_url)
        self._strategy = SlidingWindowCounterRateLimiter(storage)

    async def hit(self, items: tuple[RateLimitItem, ...], subject: str, *key: str) -> None:
        """Count one call against each limit of `key`; `subject` names it to the client."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                for item in map(self._share, items):
                    if not await self._strategy.hit(item, *key):
                        stats = await self._strategy.get_window_stats(item, *key)
                        delay = max(RETRY_DELAY_MIN_SECONDS, stats.reset_time - time.time())
                        raise errors.RateLimited(subject, str(item), delay)
        except (StorageError, TimeoutError, OSError) as exc:
            raise errors.RateLimitUnavailable() from exc

    def _share(self, item: RateLimitItem) -> RateLimitItem:
        """What this process enforces of `item` (all of it unless processes share it)."""
        if self._sharing == 1:
            return item
        share = self._shares.get(item)
        if share is None:
            amount = max(1, item.amount // self._sharing)
            share = type(item)(amount, item.multiples, item.namespace)
            # Bounded: the items come from the settings and the callers file.
            self._shares[item] = share
        return share

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
            try:
                await self._limiter.hit(
                    authenticated_caller().limits_for(rpc),
                    f"caller:{caller}/{rpc}",
                    "caller",
                    caller,
                    rpc,
                )
                if rpc == PER_ACCOUNT_RPC and not isinstance(request_or_iterator, Undecodable):
                    # Longer ids are invalid and refused later; cutting them keeps the
                    # key bounded while they are still counted. An undecodable request
                    # names no account: its handler refuses it.
                    account = request_or_iterator.account_id[: limits.ACCOUNT_ID_CHARS_MAX]
                    await self._limiter.hit(
                        self._per_account, f"account:{account}", "account", account
                    )
            except errors.RateLimited as exc:
                log.info("rate limited", extra={"method": method_name, "subject": exc.subject})
                metrics.RATE_LIMITED.labels(caller=caller, method=rpc).inc()
                raise
        return await call_next(method, request_or_iterator, ctx)
