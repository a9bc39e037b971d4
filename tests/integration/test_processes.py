"""Several service processes on one port (service.processes): `python -m service` with
CREDITS_PROCESSES=2 starts two workers that listen on the same address and whose metrics
are served as one; SIGTERM stops them all cleanly; a worker that dies takes the service
down with it; no worker outlives a killed supervisor; pools that PostgreSQL cannot hold
refuse the start. The supervisor is the process CREDITS_PID_FILE names, and its workers'
metrics folder (under TMPDIR, one per test here) does not outlive it. The workers count
rate limits in one Redis (settings refuse several processes without one), so that a limit
is the limit for a client whose one connection reaches one worker, with the default
process count."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from scripts.devcallers import ensure_dev_callers
from service import settings
from service.ops import metrics, pidfile
from tests.integration.test_ratelimit_redis import RedisProcess
from tests.service_process import ServiceProcess, production_env
from tests.support import CALL_TIMEOUT_SECONDS, free_port, new_id, open_channel

REPOSITORY = Path(__file__).resolve().parents[2]
PROCESSES = 2
START_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 30.0
POLL_SECONDS = 0.1
# Separate connections, as separate clients would have: each lands on one worker.
CONNECTIONS = 8
TCP_LISTEN_STATE = "0A"  # in /proc/net/tcp
# The per-account Reserve limit of the exactness test, sent all at once on one connection.
EXACT_LIMIT = 50


class Supervised:
    """`python -m service` as production runs it, with CREDITS_PROCESSES workers."""

    def __init__(self, database_url: str, pki: Path, log: Path, redis_url: str, **env: str) -> None:
        ensure_dev_callers(pki / "callers.toml")
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = log
        # The test's own: what the service leaves in it is this test's alone to see.
        self.tmpdir = log.parent / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        self.pid_file = log.parent / "service.pid"
        self.env = {
            "PATH": os.environ["PATH"],
            "TMPDIR": str(self.tmpdir),
            "CREDITS_PID_FILE": str(self.pid_file),
            "CREDITS_ENV": "production",
            "CREDITS_DATABASE_URL": database_url,
            "CREDITS_GRPC_ADDR": f"127.0.0.1:{self.port}",
            "CREDITS_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "CREDITS_TLS_CA_FILE": str(pki / "ca.pem"),
            "CREDITS_TLS_CERT_FILE": str(pki / "server.pem"),
            "CREDITS_TLS_KEY_FILE": str(pki / "server.key"),
            "CREDITS_CALLERS_FILE": str(pki / "callers.toml"),
            "CREDITS_PROCESSES": str(PROCESSES),
            "CREDITS_DB_POOL_SIZE": "2",
            "CREDITS_REDIS_URL": redis_url,
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"],
                cwd=REPOSITORY,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_serving(self) -> None:
        """Until the supervisor says that every worker serves."""
        deadline = time.monotonic() + START_SECONDS_MAX
        while time.monotonic() < deadline:
            if any(e.get("msg") == "serving" for e in self.entries()):
                return
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"the service exited while starting:\n{self.log.read_text()}")
            time.sleep(POLL_SECONDS)
        pytest.fail(f"the workers did not all start:\n{self.log.read_text()}")

    def entries(self) -> list[dict[str, object]]:
        """The JSON log lines so far (the last one may still be half-written)."""
        found = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
        return found

    def workers(self) -> list[int]:
        assert self.process is not None
        pid = self.process.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait(timeout=STOP_SECONDS_MAX)

    def kill(self) -> None:
        """Whatever is left of the supervisor and its workers."""
        if self.process is None:
            return
        leftover = self.workers() if self.process.poll() is None else []
        for pid in [self.process.pid, *leftover]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def metrics_folders(self) -> list[Path]:
        return sorted(self.tmpdir.glob(metrics.PROCESSES_DIRECTORY_PREFIX + "*"))


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def service(
    database_url: str, pki: Path, tmp_path: Path, redis: RedisProcess
) -> Iterator[Supervised]:
    supervised = Supervised(database_url, pki, tmp_path / "service.log", redis.url)
    try:
        yield supervised
    finally:
        supervised.kill()


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def wait_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + STOP_SECONDS_MAX
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(POLL_SECONDS)
    return False


def listening_sockets(port: int) -> int:
    """Sockets listening on `port` (gRPC listens on IPv6 sockets, IPv4-mapped)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == TCP_LISTEN_STATE:
                count += 1
    return count


async def balances_over_separate_connections(pki: Path, port: int) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "ops.key").read_bytes(),
        certificate_chain=(pki / "ops.pem").read_bytes(),
    )
    options = (("grpc.use_local_subchannel_pool", 1),)
    channels = [
        grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)
        for _ in range(CONNECTIONS)
    ]
    try:
        await asyncio.gather(
            *(
                Stub(c).GetBalance(
                    pb.GetBalanceRequest(account_id=new_id()), timeout=CALL_TIMEOUT_SECONDS
                )
                for c in channels
            )
        )
    finally:
        await asyncio.gather(*(c.close() for c in channels))


async def test_workers_share_the_port_and_one_metrics_endpoint(
    service: Supervised, pki: Path
) -> None:
    service.start()
    service.wait_serving()
    assert len(service.workers()) == PROCESSES
    assert listening_sockets(service.port) == PROCESSES
    await balances_over_separate_connections(pki, service.port)
    url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT_SECONDS) as client:
        scraped = (await client.get(url)).text
    served = 'credits_rpcs_total{code="OK",method="/credits.v1.CreditsService/GetBalance"}'
    counted = [line for line in scraped.splitlines() if line.startswith(served)]
    assert counted == [f"{served} {float(CONNECTIONS)}"]


def test_a_reload_during_the_start_is_held_until_every_worker_can_reload(
    service: Supervised,
) -> None:
    service.start()
    assert service.process is not None
    while "supervising" not in service.log.read_text():
        time.sleep(POLL_SECONDS)
    # The workers are starting: not one of them can reload yet.
    service.process.send_signal(signal.SIGHUP)
    service.wait_serving()
    deadline = time.monotonic() + STOP_SECONDS_MAX
    while sum(e.get("file") == "CREDITS_CALLERS_FILE" for e in service.entries()) < PROCESSES:
        assert time.monotonic() < deadline, service.log.read_text()
        time.sleep(POLL_SECONDS)
    assert len(service.workers()) == PROCESSES


def test_sigterm_stops_every_worker_and_the_supervisor_cleanly(service: Supervised) -> None:
    service.start()
    service.wait_serving()
    workers = service.workers()
    assert service.process is not None
    service.process.send_signal(signal.SIGTERM)
    assert service.wait() == 0
    assert wait_gone(workers)
    assert sum(e.get("msg") == "stopped" for e in service.entries()) == PROCESSES


def test_a_worker_that_dies_stops_the_whole_service(service: Supervised) -> None:
    service.start()
    service.wait_serving()
    first, second = service.workers()
    os.kill(first, signal.SIGKILL)
    assert service.wait() == 1
    assert wait_gone([second])


def test_no_worker_outlives_a_killed_supervisor(service: Supervised) -> None:
    service.start()
    service.wait_serving()
    workers = service.workers()
    assert service.process is not None
    service.process.kill()
    service.process.wait()
    assert wait_gone(workers)


def test_pools_larger_than_postgresql_allows_refuse_the_start(
    database_url: str, pki: Path, tmp_path: Path, redis: RedisProcess
) -> None:
    supervised = Supervised(
        database_url, pki, tmp_path / "service.log", redis.url, CREDITS_DB_POOL_SIZE="200"
    )
    try:
        supervised.start()
        assert supervised.wait() == 1
        printed = supervised.log.read_text()
        # The first worker to refuse stops the service; the other may not get to say so.
        assert "credits service cannot start: CREDITS_PROCESSES times" in printed
        assert "Traceback" not in printed
    finally:
        supervised.kill()


def test_the_pid_file_names_the_supervisor_until_it_stops(service: Supervised) -> None:
    service.start()
    service.wait_serving()
    assert service.process is not None
    assert pidfile.read(service.pid_file) == service.process.pid
    service.process.send_signal(signal.SIGTERM)
    assert service.wait() == 0
    assert not service.pid_file.exists()


def test_a_reload_through_the_pid_file_reaches_every_worker_which_names_itself(
    service: Supervised,
) -> None:
    service.start()
    service.wait_serving()
    pidfile.signal_service(service.pid_file, signal.SIGHUP)
    deadline = time.monotonic() + STOP_SECONDS_MAX
    while True:
        reloaded = [
            e for e in service.entries() if e.get("msg") == "reloaded" and e.get("file") == "tls"
        ]
        if len(reloaded) == PROCESSES:
            break
        assert time.monotonic() < deadline, service.log.read_text()
        time.sleep(POLL_SECONDS)
    assert {e.get("worker") for e in reloaded} == set(range(PROCESSES))
    assert len(service.workers()) == PROCESSES


def test_a_second_service_on_the_same_pid_file_is_refused(
    service: Supervised, database_url: str, pki: Path
) -> None:
    service.start()
    service.wait_serving()
    second = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPOSITORY,
        env={
            **service.env,
            "CREDITS_PROCESSES": "1",
            "CREDITS_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        },
        capture_output=True,
        text=True,
        timeout=START_SECONDS_MAX,
        check=False,
    )
    assert second.returncode == 2
    assert "CREDITS_PID_FILE names a service that is running" in second.stderr
    assert service.process is not None
    assert pidfile.read(service.pid_file) == service.process.pid


def test_one_process_alone_names_itself_in_the_pid_file(
    database_url: str, pki: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "service.pid"
    env = production_env(
        database_url, pki, free_port(), CREDITS_PROCESSES="1", CREDITS_PID_FILE=str(pid_file)
    )
    with ServiceProcess(env) as alone:
        assert pidfile.read(pid_file) == alone.pid
        alone.signal(signal.SIGHUP)
        reloaded = alone.wait_for_log(lambda e: e.get("msg") == "reloaded")
        assert "worker" not in reloaded
        assert alone.stop() == 0
    assert not pid_file.exists()


def test_the_metrics_folder_is_removed_when_the_service_stops(service: Supervised) -> None:
    assert service.metrics_folders() == []
    service.start()
    service.wait_serving()
    assert len(service.metrics_folders()) == 1
    assert service.process is not None
    service.process.send_signal(signal.SIGTERM)
    assert service.wait() == 0
    assert service.metrics_folders() == []
    assert list(service.tmpdir.iterdir()) == []


def test_the_metrics_folder_of_a_killed_supervisor_is_removed_by_the_next_start(
    service: Supervised, database_url: str, pki: Path, tmp_path: Path, redis: RedisProcess
) -> None:
    service.start()
    service.wait_serving()
    workers = service.workers()
    service.kill()
    assert wait_gone(workers)
    [abandoned] = service.metrics_folders()
    following = Supervised(database_url, pki, tmp_path / "following.log", redis.url)
    try:
        following.start()
        following.wait_serving()
        [in_use] = following.metrics_folders()
        assert in_use != abandoned
        assert following.process is not None
        following.process.send_signal(signal.SIGTERM)
        assert following.wait() == 0
    finally:
        following.kill()
    assert following.metrics_folders() == []


async def reserve_code(stub: Stub, account: str) -> grpc.StatusCode:
    request = pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id())
    try:
        await stub.Reserve(request, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_one_connection_gets_the_whole_limit_with_the_default_process_count(
    service: Supervised, pki: Path
) -> None:
    del service.env["CREDITS_PROCESSES"]
    service.env["CREDITS_RESERVE_RATE_PER_ACCOUNT"] = f"{EXACT_LIMIT}/second"
    service.start()
    service.wait_serving()
    assert len(service.workers()) == settings.cores()
    account = new_id()
    async with open_channel(pki, "backend", f"127.0.0.1:{service.port}") as channel:
        stub = Stub(channel)
        codes = await asyncio.gather(*(reserve_code(stub, account) for _ in range(EXACT_LIMIT)))
    # The account holds no credits: every call the limiter let in is refused by the ledger.
    assert codes == [grpc.StatusCode.FAILED_PRECONDITION] * EXACT_LIMIT


def test_several_processes_without_redis_refuse_the_start(
    database_url: str, pki: Path, tmp_path: Path, redis: RedisProcess
) -> None:
    supervised = Supervised(database_url, pki, tmp_path / "service.log", redis.url)
    del supervised.env["CREDITS_REDIS_URL"]
    try:
        supervised.start()
        assert supervised.wait() == 2
        printed = supervised.log.read_text()
        assert (
            "credits service cannot start: CREDITS_PROCESSES above 1 needs CREDITS_REDIS_URL"
            in printed
        )
        assert "Traceback" not in printed
    finally:
        supervised.kill()
