"""`SyncCreditsClient`: the asynchronous client for synchronous code.

It owns a private event loop on a background thread, where one `CreditsClient` does
every call; each synchronous method submits the asynchronous one there and waits. The
methods are derived from `CreditsClient`'s, so both always have the same signatures,
and there is one implementation of the calls, retries, errors and holds.
"""

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from credits_client.client import CALL_TIMEOUT_SECONDS_DEFAULT, CreditsClient, FilePath
from credits_client.hold import Hold
from credits_client.retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
# How long closing waits for the loop's thread once the channel is closed.
THREAD_JOIN_SECONDS = 10.0


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="credits-client", daemon=True
        )
        self._thread.start()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Runs `awaitable` on the loop and waits for it; if the waiting thread is
        interrupted (KeyboardInterrupt), the work on the loop is cancelled too."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            _awaited(awaitable), self.loop
        )
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(THREAD_JOIN_SECONDS)
        if not self._thread.is_alive():
            self.loop.close()


def _blocking(
    method: Callable[Concatenate[CreditsClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate["SyncCreditsClient", P], R]:
    def call(self: "SyncCreditsClient", /, *args: P.args, **kwargs: P.kwargs) -> R:
        loop, client = self._running()
        return loop.run(method(client, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


def _blocking_iterator(
    method: Callable[Concatenate[CreditsClient, P], AsyncIterator[R]],
) -> Callable[Concatenate["SyncCreditsClient", P], Iterator[R]]:
    def call(self: "SyncCreditsClient", /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        loop, client = self._running()
        items = method(client, *args, **kwargs)
        while True:
            try:
                yield loop.run(anext(items))
            except StopAsyncIteration:
                return

    functools.update_wrapper(call, method)
    return call


class BlockingHold:
    """`with client.hold(...) as hold:` -- the asynchronous Hold, entered and exited on
    the client's loop; the body runs in the caller's thread."""

    def __init__(self, loop: _LoopThread, hold: Hold) -> None:
        self._loop = loop
        self._hold = hold

    def __enter__(self) -> Hold:
        return self._loop.run(self._hold.__aenter__())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._loop.run(self._hold.__aexit__(exc_type, exc, traceback))


def _blocking_hold(
    method: Callable[Concatenate[CreditsClient, P], Hold],
) -> Callable[Concatenate["SyncCreditsClient", P], BlockingHold]:
    def call(self: "SyncCreditsClient", /, *args: P.args, **kwargs: P.kwargs) -> BlockingHold:
        loop, client = self._running()
        return BlockingHold(loop, method(client, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


class SyncCreditsClient:
    """The credits service, from synchronous code: the same arguments as
    `CreditsClient` (an address, not an open channel), the same methods, blocking. Safe
    to share between threads. Its thread starts on the first call, and a forked process
    (a pre-forking worker pool) starts its own. `with client:` (or `client.close()`)
    stops it."""

    def __init__(
        self,
        target: str,
        /,
        *,
        ca_file: FilePath | None = None,
        cert_file: FilePath | None = None,
        key_file: FilePath | None = None,
        api_key: str | None = None,
        server_name: str | None = None,
        timeout_seconds: float = CALL_TIMEOUT_SECONDS_DEFAULT,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not isinstance(target, str):
            raise TypeError("the synchronous client opens its own channel: give an address")
        self._new_client = functools.partial(
            CreditsClient,
            target,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            api_key=api_key,
            server_name=server_name,
            timeout_seconds=timeout_seconds,
            retry=retry,
        )
        self._client = self._new_client()  # checks the arguments and reads the files now
        self._loop: _LoopThread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _running(self) -> tuple[_LoopThread, CreditsClient]:
        """This process's loop thread and client, started on first use. A forked child
        inherits neither a running thread nor a usable channel: it starts its own, unless
        the parent had called already (gRPC then hangs in the child: refused instead)."""
        with self._lock:
            if self._pid != os.getpid():
                if self._loop is not None:
                    raise RuntimeError(
                        "this client was used before the process forked, which gRPC does "
                        "not survive: make no call before the fork, or create it after"
                    )
                self._client, self._pid = self._new_client(), os.getpid()
            if self._loop is None:
                self._loop = _LoopThread()
            return self._loop, self._client

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel and stops the thread; a later call starts them again."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None or self._pid != os.getpid():
            return
        try:
            loop.run(self._client.close())
        finally:
            loop.stop()

    reserve = _blocking(CreditsClient.reserve)
    confirm = _blocking(CreditsClient.confirm)
    release = _blocking(CreditsClient.release)
    grant = _blocking(CreditsClient.grant)
    revoke = _blocking(CreditsClient.revoke)
    transfer = _blocking(CreditsClient.transfer)
    balance = _blocking(CreditsClient.balance)
    usage = _blocking_iterator(CreditsClient.usage)
    list_grants = _blocking_iterator(CreditsClient.list_grants)
    list_entries = _blocking_iterator(CreditsClient.list_entries)
    get_reservation = _blocking(CreditsClient.get_reservation)
    extend_reservation = _blocking(CreditsClient.extend_reservation)
    get_account = _blocking(CreditsClient.get_account)
    get_usage_summary = _blocking(CreditsClient.get_usage_summary)
    update_account_settings = _blocking(CreditsClient.update_account_settings)
    set_price = _blocking(CreditsClient.set_price)
    list_prices = _blocking_iterator(CreditsClient.list_prices)
    price_history = _blocking_iterator(CreditsClient.price_history)
    watch_events = _blocking_iterator(CreditsClient.watch_events)
    hold = _blocking_hold(CreditsClient.hold)
