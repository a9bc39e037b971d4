"""Database outages: connections killed by `pg_terminate_backend`, a PostgreSQL restart
and a database that is gone for a while, each during traffic. Calls fail fast with
UNAVAILABLE (DATABASE_UNAVAILABLE, retryable), never hang to the client's deadline and
never say INTERNAL; health says NOT_SERVING while the database cannot be reached; the
service recovers by itself.

These tests stop and start PostgreSQL, so they run against one of their own, never the
suite's shared one."""

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pgserver import _commands as pg_commands
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from credits.v1 import credits_pb2
from credits.v1.credits_pb2_grpc import CreditsServiceStub
from service.rpc import health
from service.settings import DB_CONNECT_TIMEOUT_SECONDS_DEFAULT
from service.store import database
from service.store.events import EventListener
from service.store.postgres import DRIVER_TIMEOUT_MARGIN_SECONDS, sqlalchemy_url
from tests.support import RunningServer, error_details, funded_account, open_channel, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Generous: a call that is refused must come back long before this; one that hangs on
# the dead database would run into it.
CLIENT_DEADLINE_SECONDS = 10.0
# What "fail fast" means here: well under the client's deadline.
FAIL_FAST_SECONDS = 3.0
# The server's statement timeout here: a database that stops answering is given up on
# about this long (plus the driver's margin) into a call.
STATEMENT_TIMEOUT_SECONDS = 1.0
# At worst: the pooled connection's check runs into the driver's timeout (statement timeout
# plus DRIVER_TIMEOUT_MARGIN_SECONDS), then a new connection into the connect timeout.
GIVE_UP_SECONDS = (
    STATEMENT_TIMEOUT_SECONDS
    + DRIVER_TIMEOUT_MARGIN_SECONDS
    + DB_CONNECT_TIMEOUT_SECONDS_DEFAULT
    + FAIL_FAST_SECONDS
)
HEALTH_INTERVAL_SECONDS = 0.2
# How long the service may take to notice a change of the database (a few probes).
NOTICE_SECONDS = 10.0
WORKERS = 8
PG_CTL_TIMEOUT_SECONDS = 60
# A stream is woken within the notifier's coalescing interval; this is very generous.
EVENT_WAKE_SECONDS = 2.0
EVENT_RESTARTS = 5


# Runs in a process of its own: pgserver starts PostgreSQL (as its own user when run as
# root) with subprocess's user=, which forks the calling process, and a fork of this one,
# whose gRPC threads are busy, crashes before its exec.
START_SCRIPT = """
import json, sys, pgserver
server = pgserver.get_server(sys.argv[1], cleanup_mode=None)
print(json.dumps({"uri": server.get_uri(), "user": server.system_user}))
"""


@dataclass
class Postgres:
    """A PostgreSQL of these tests only, in a folder outside pytest's (whose permissions
    other pytest sessions reset, which would stop PostgreSQL's own user from restarting it)."""

    pgdata: Path
    system_user: str | None
    admin_url: str = ""
    service_url: str = ""

    @classmethod
    def create(cls, pgdata: Path) -> "Postgres":
        started = subprocess.run(
            [sys.executable, "-c", START_SCRIPT, str(pgdata)],
            check=True,
            capture_output=True,
            text=True,
            timeout=PG_CTL_TIMEOUT_SECONDS,
        )
        answer = json.loads(started.stdout.splitlines()[-1])
        return cls(pgdata, answer["user"], admin_url=answer["uri"])

    def pg_ctl(self, *args: str) -> None:
        command = [str(pg_commands.POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w"]
        # As root PostgreSQL runs as its own user; `runuser` rather than subprocess's user=
        # for the reason above.
        prefix = ["runuser", "-u", self.system_user, "--"] if self.system_user else []
        # Output to the data folder's log: the server started inherits any pipe given here.
        subprocess.run(
            [*prefix, *command, *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=PG_CTL_TIMEOUT_SECONDS,
        )

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self.pg_ctl(
            "-o", '-h ""', "-o", f"-k {self.pgdata}", "-l", str(self.pgdata / "log"), "start"
        )

    def restart(self) -> None:
        self.pg_ctl("-m", "fast", "restart")

    def freeze(self, signum: int) -> None:
        """SIGSTOP (or SIGCONT) every process of the server: a host that stopped answering."""
        for process in psutil.process_iter(["cwd"]):
            if process.info["cwd"] == str(self.pgdata):
                process.send_signal(signum)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    folder = Path(tempfile.mkdtemp(prefix="credits-outages-"))
    folder.chmod(0o755)
    try:
        # Not stopped by pgserver when this process exits: the fixture stops it itself.
        db = Postgres.create(folder / "pgdata")
        try:
            database.migrate(db.admin_url)
            db.service_url = asyncio.run(database.ensure_dev_login(db.admin_url))
            yield db
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                db.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Served:
    server: RunningServer
    stub: CreditsServiceStub
    health: health_pb2_grpc.HealthStub


@pytest.fixture
async def served(postgres: Postgres, pki: Path) -> AsyncIterator[Served]:
    """The production server and its database monitor, as `python -m service` runs them."""
    running = await start_server(
        postgres.service_url,
        pki,
        CREDITS_HEALTH_CHECK_INTERVAL_SECONDS=str(HEALTH_INTERVAL_SECONDS),
        CREDITS_DB_STATEMENT_TIMEOUT_SECONDS=str(STATEMENT_TIMEOUT_SECONDS),
    )
    monitor = asyncio.create_task(
        health.watch_database(
            running.store.ping,
            running.built.health,
            running.settings.health_check_interval_seconds,
        )
    )
    try:
        async with open_channel(pki, "ops", running.address) as channel:
            yield Served(running, CreditsServiceStub(channel), health_pb2_grpc.HealthStub(channel))
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        await running.stop()


@dataclass
class Traffic:
    """Workers calling GetBalance and Reserve in a loop; what each call ended with."""

    stub: CreditsServiceStub
    account: str
    outcomes: Counter[str] = field(default_factory=Counter)
    slowest_failure_seconds: float = 0.0
    stopping: bool = False

    async def _one(self, worker: int, n: int) -> None:
        started = time.monotonic()
        try:
            if n % 2:
                await self.stub.GetBalance(
                    credits_pb2.GetBalanceRequest(account_id=self.account),
                    timeout=CLIENT_DEADLINE_SECONDS,
                )
            else:
                await self.stub.Reserve(
                    credits_pb2.ReserveRequest(
                        account_id=self.account,
                        amount=1,
                        idempotency_key=f"{self.account}-{worker}-{n}",
                    ),
                    timeout=CLIENT_DEADLINE_SECONDS,
                )
            self.outcomes["OK"] += 1
        except grpc.aio.AioRpcError as err:
            reason, _ = error_details(err)
            self.outcomes[f"{err.code().name}/{reason}"] += 1
            elapsed = time.monotonic() - started
            self.slowest_failure_seconds = max(self.slowest_failure_seconds, elapsed)

    async def _worker(self, worker: int) -> None:
        n = 0
        while not self.stopping:
            n += 1
            await self._one(worker, n)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["Traffic"]:
        tasks = [asyncio.create_task(self._worker(w)) for w in range(WORKERS)]
        try:
            yield self
        finally:
            self.stopping = True
            await asyncio.gather(*tasks)

    def failures(self) -> set[str]:
        return {outcome for outcome in self.outcomes if outcome != "OK"}


async def wait_for(condition: Any, seconds: float = NOTICE_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "the service did not notice in time"
        await asyncio.sleep(HEALTH_INTERVAL_SECONDS / 2)


async def serves(stub: CreditsServiceStub, account: str) -> bool:
    try:
        await stub.GetBalance(credits_pb2.GetBalanceRequest(account_id=account), timeout=5)
    except grpc.aio.AioRpcError:
        return False
    return True


async def health_is(served: Served, status: int) -> bool:
    answer = await served.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return bool(answer.status == status)


async def terminate_service_connections(admin_url: str) -> int:
    engine = create_async_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'credits-service'"
                )
            )
            return int(killed or 0)
    finally:
        await engine.dispose()


def sample(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def pool_idle() -> bool:
    return sample("credits_db_pool_in_use") == 0 and sample("credits_db_pool_waiting") == 0


def assert_only_fast_unavailable(traffic: Traffic) -> None:
    assert traffic.failures() <= {"UNAVAILABLE/DATABASE_UNAVAILABLE"}, traffic.outcomes
    assert traffic.slowest_failure_seconds < FAIL_FAST_SECONDS, traffic.slowest_failure_seconds


async def test_terminated_connections_during_traffic(served: Served, postgres: Postgres) -> None:
    account = await funded_account(served.stub, 1_000_000)
    traffic = Traffic(served.stub, account)
    async with traffic.running():
        await asyncio.sleep(0.5)
        killed = 0
        for _ in range(5):
            killed += await terminate_service_connections(postgres.admin_url)
            await asyncio.sleep(0.3)
        assert killed > 0
        await asyncio.sleep(0.5)
    assert traffic.outcomes["OK"] > 0
    assert_only_fast_unavailable(traffic)
    assert await serves(served.stub, account)
    assert await health_is(served, SERVING)
    # Every connection goes back to the pool, killed ones included, and no call waits
    # (between the health monitor's probes, which hold one for a moment).
    await wait_for(pool_idle)


async def test_a_restart_during_traffic(served: Served, postgres: Postgres) -> None:
    account = await funded_account(served.stub, 1_000_000)
    traffic = Traffic(served.stub, account)
    async with traffic.running():
        await asyncio.sleep(0.5)
        await asyncio.to_thread(postgres.restart)
        await wait_for(lambda: serves(served.stub, account))
    assert_only_fast_unavailable(traffic)
    await wait_for(lambda: health_is(served, SERVING))


async def test_a_database_gone_for_a_while(served: Served, postgres: Postgres) -> None:
    account = await funded_account(served.stub, 1000)
    watch = served.health.Watch(health_pb2.HealthCheckRequest(service=""))
    seen = [(await watch.read()).status]
    await asyncio.to_thread(postgres.stop)
    try:
        await wait_for(lambda: health_is(served, NOT_SERVING))
        seen.append((await watch.read()).status)
        assert sample("credits_health_serving") == 0
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.GetBalance(
                credits_pb2.GetBalanceRequest(account_id=account), timeout=CLIENT_DEADLINE_SECONDS
            )
        assert time.monotonic() - started < FAIL_FAST_SECONDS
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_details(refused.value)[0] == "DATABASE_UNAVAILABLE"
    finally:
        await asyncio.to_thread(postgres.start)
    await wait_for(lambda: health_is(served, SERVING))
    seen.append((await watch.read()).status)
    watch.cancel()
    assert seen == [SERVING, NOT_SERVING, SERVING]
    assert sample("credits_health_serving") == 1
    assert await serves(served.stub, account)


async def test_a_database_that_stops_answering(served: Served, postgres: Postgres) -> None:
    account = await funded_account(served.stub, 1000)
    postgres.freeze(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.GetBalance(
                credits_pb2.GetBalanceRequest(account_id=account), timeout=CLIENT_DEADLINE_SECONDS
            )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value
        assert time.monotonic() - started < GIVE_UP_SECONDS
        assert error_details(refused.value)[0] == "DATABASE_UNAVAILABLE"
        await wait_for(lambda: health_is(served, NOT_SERVING))
    finally:
        postgres.freeze(signal.SIGCONT)
    await wait_for(lambda: health_is(served, SERVING))
    assert await serves(served.stub, account)


async def _wakes(listener: EventListener, notifier: EventListener) -> bool:
    """Whether a call that ended in `notifier`'s process wakes `listener`'s streams."""
    woken = listener.next_signal()
    notifier.changed()
    try:
        await asyncio.wait_for(woken.wait(), EVENT_WAKE_SECONDS)
    except TimeoutError:
        return False
    return True


async def test_event_notifications_outlive_restarts_during_traffic(postgres: Postgres) -> None:
    """A notification that fails in any way (sent as the database goes down, or on the
    connection it left half-answered) neither ends the process's notifying nor is raised
    when the server stops: after the restarts, one process's calls still wake another's
    streams, and both close cleanly."""
    notifier, listener = EventListener(postgres.service_url), EventListener(postgres.service_url)
    stopping = asyncio.Event()

    async def calls_ending() -> None:
        while not stopping.is_set():
            notifier.changed()
            await asyncio.sleep(0.001)

    traffic = asyncio.create_task(calls_ending())
    try:
        for _ in range(EVENT_RESTARTS):
            await asyncio.sleep(0.3)
            await asyncio.to_thread(postgres.restart)
    finally:
        stopping.set()
        await traffic
    await wait_for(lambda: _wakes(listener, notifier))
    await notifier.aclose()
    await listener.aclose()
