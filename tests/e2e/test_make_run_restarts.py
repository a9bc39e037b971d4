"""`make run` stops everything it started on Ctrl-C, SIGTERM and SIGHUP, and starts
again after any stop: kill -9 of every process (PostgreSQL's included), a recorded
postmaster pid that now belongs to another process, a runner killed alone."""

import signal
import subprocess

import psutil

from tests.e2e.runner import STOP_SECONDS_MAX, DevRun

ACCOUNT = "acct_restarts"


def grant(devrun: DevRun, amount: int, key: str) -> None:
    devrun.call(
        "Grant",
        {
            "account_id": ACCOUNT,
            "amount": amount,
            "source": "GRANT_SOURCE_PURCHASE",
            "idempotency_key": key,
        },
    )


def available(devrun: DevRun) -> int:
    return int(str(devrun.call("GetBalance", {"account_id": ACCOUNT}).get("available", "0")))


def assert_all_stopped(devrun: DevRun) -> None:
    assert devrun.processes() == []
    assert not (devrun.pgdata / "postmaster.pid").exists()


def test_ctrl_c_and_sigterm_stop_everything_it_started(devrun: DevRun) -> None:
    devrun.start()
    banner = next(line for line in devrun.log().splitlines() if "Ctrl-C" in line)
    # Not the default 50051: the banner and the gateway follow CREDITS_GRPC_ADDR.
    assert f"credits service on {devrun.address}," in banner
    assert f"calling it at {devrun.address};" in banner
    assert devrun.postgres(), "the embedded PostgreSQL runs while make run does"
    assert devrun.stop(signal.SIGINT, group=True) == 0
    assert_all_stopped(devrun)

    devrun.start()
    assert devrun.stop(signal.SIGTERM) == 0
    assert_all_stopped(devrun)


def test_kill_9_of_everything_then_start_serves(devrun: DevRun) -> None:
    """After kill -9 the pid in postmaster.pid soon belongs to another process (pids are
    reused; a zombie keeps its pid): trusting it made the next start connect to a dead
    socket and fail with ConnectionRefusedError."""
    devrun.start()
    grant(devrun, 100, "restarts-1")
    devrun.kill_everything()
    assert devrun.processes() == []
    pid_file = devrun.pgdata / "postmaster.pid"
    assert pid_file.exists(), "the killed server leaves its pid file"
    stranger = subprocess.Popen(["sleep", str(int(STOP_SECONDS_MAX * 10))])
    try:
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(stranger.pid), *lines[1:]]) + "\n")

        devrun.start()
        assert available(devrun) == 100
        assert stranger.poll() is None, "a process that is not PostgreSQL is left alone"
        assert devrun.stop(signal.SIGHUP) == 0
        assert_all_stopped(devrun)
    finally:
        stranger.kill()
        stranger.wait()


def test_kill_9_of_the_runner_alone(devrun: DevRun) -> None:
    """The service, the gateway and the runner's Redis die with the runner (they would
    hold its ports); the next start joins the PostgreSQL that is still up, and its stop
    stops that too."""
    devrun.start()
    assert devrun.process is not None
    children = psutil.Process(devrun.process.pid).children()
    assert [c.name() for c in children].count("redis-server") == 1
    assert len(children) == 3
    devrun.process.kill()
    devrun.process.wait()
    _gone, alive = psutil.wait_procs(children, timeout=STOP_SECONDS_MAX)
    assert alive == []
    assert devrun.postgres(), "PostgreSQL lives in its own session and stays up"

    devrun.start()
    assert available(devrun) == 0
    assert devrun.stop(signal.SIGTERM) == 0
    assert_all_stopped(devrun)
