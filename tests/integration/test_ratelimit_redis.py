"""Rate limits shared through Redis (`CREDITS_REDIS_URL`) by several service instances,
against a real redis-server these tests start; a Redis that is down or hangs refuses
calls (UNAVAILABLE), never lets them through."""

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.access.ratelimit import STORE_TIMEOUT_SECONDS
from service.ledger import failures
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import (
    RunningServer,
    error_details,
    free_port,
    new_id,
    open_channel,
    start_server,
)

REDIS_START_TIMEOUT_SECONDS = 10.0
REDIS_STOP_TIMEOUT_SECONDS = 10.0
SHARED_LIMIT = 10
# How long a refused call may take when Redis hangs: the store timeout and some slack.
HUNG_STORE_CALL_SECONDS_MAX = STORE_TIMEOUT_SECONDS + 2.0


class RedisProcess:
    """A throwaway redis-server on loopback: no persistence, stopped by the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed: run scripts/ensure-redis-server.sh")
        listen = ("--port", str(self.port), "--bind", "127.0.0.1")
        ephemeral = ("--save", "", "--appendonly", "no")
        self._process = subprocess.Popen(
            [executable, *listen, *ephemeral], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + REDIS_START_TIMEOUT_SECONDS
        while not self._answers():
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.stop()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)

    def _answers(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
        ):
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=REDIS_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    redis = RedisProcess(free_port())
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
async def two_instances(
    redis_server: RedisProcess, database_url: str, pki: Path
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    rate = f"{SHARED_LIMIT}/minute"
    first, second = [
        await start_server(
            database_url,
            pki,
            CREDITS_REDIS_URL=redis_server.url,
            CREDITS_RESERVE_RATE_PER_ACCOUNT=rate,
        )
        for _ in range(2)
    ]
    yield first, second
    await first.stop()
    await second.stop()


async def reserve_code(stub: Stub, account: str) -> grpc.StatusCode:
    request = pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id())
    try:
        await stub.Reserve(request, timeout=T)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def balance_error(server: RunningServer, pki: Path) -> grpc.aio.AioRpcError | None:
    async with open_channel(pki, "backend", server.address) as channel:
        try:
            await Stub(channel).GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
        except grpc.aio.AioRpcError as err:
            return err
    return None


def assert_store_unavailable(err: grpc.aio.AioRpcError | None) -> None:
    assert err is not None, "a call was let through without its rate limit"
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == failures.RateLimitUnavailable.message
    assert error_details(err)[0] == "RATE_LIMIT_UNAVAILABLE"


async def test_two_instances_share_one_limit(
    two_instances: tuple[RunningServer, RunningServer], pki: Path
) -> None:
    account = new_id()
    first, second = two_instances
    async with (
        open_channel(pki, "backend", first.address) as one,
        open_channel(pki, "backend", second.address) as two,
    ):
        stubs = [Stub(one), Stub(two)]
        # Alternating instances: together they allow the limit once, not twice.
        codes = [await reserve_code(stubs[i % 2], account) for i in range(2 * SHARED_LIMIT)]
    # No credits on the account: a call the limiter let in fails its precondition.
    allowed = codes.count(grpc.StatusCode.FAILED_PRECONDITION)
    assert allowed == SHARED_LIMIT, codes
    assert codes[SHARED_LIMIT:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * SHARED_LIMIT


async def test_a_dead_redis_refuses_calls(database_url: str, pki: Path) -> None:
    server = await start_server(
        database_url, pki, CREDITS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    try:
        assert_store_unavailable(await balance_error(server, pki))
    finally:
        await server.stop()


async def test_redis_going_down_refuses_calls_until_it_is_back(
    database_url: str, pki: Path
) -> None:
    redis = RedisProcess(free_port())
    redis.start()
    try:
        server = await start_server(database_url, pki, CREDITS_REDIS_URL=redis.url)
        try:
            assert await balance_error(server, pki) is None
            redis.stop()
            assert_store_unavailable(await balance_error(server, pki))
            redis.start()
            assert await balance_error(server, pki) is None
        finally:
            await server.stop()
    finally:
        redis.stop()


async def test_a_hung_redis_refuses_calls_in_time(database_url: str, pki: Path) -> None:
    """A store that accepts connections and never answers must not hold calls forever."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answer; return when the client gives up
        writer.close()

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    server = await start_server(database_url, pki, CREDITS_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    try:
        started = time.monotonic()
        assert_store_unavailable(await balance_error(server, pki))
        assert time.monotonic() - started < HUNG_STORE_CALL_SECONDS_MAX
    finally:
        await server.stop()
        hung.close()
        await hung.wait_closed()
