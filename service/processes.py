"""Several service processes on one port. A Python process serves from one core, so
`python -m service` with CREDITS_PROCESSES above 1 becomes a supervisor that starts that
many workers (`python -m service --worker N READY_FD`), all listening on the same address with
SO_REUSEPORT: the kernel spreads incoming connections over them.

The supervisor holds no gRPC object and no database connection (gRPC does not survive a
fork once it has any, so workers are fresh interpreters). It forwards SIGTERM, SIGINT and
SIGHUP to every worker (it names itself in CREDITS_PID_FILE, the one process to signal),
serves the workers' metrics as one `/metrics`, and stops them all
when one of them stops on its own, so that whatever supervises the service restarts it
whole rather than leaving it short of a process.
"""

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

from service import settings
from service.ops import logs, metrics, pidfile

log = logging.getLogger("credits.processes")

WORKER_FLAG = "--worker"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A worker killed by one of these before it could handle it stopped as asked.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_SECONDS = 0.2
# Beyond the grace period of their in-flight RPCs, the time workers get to exit.
EXIT_MARGIN_SECONDS = 5.0
# <sys/prctl.h>: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
# prometheus_client's multi-process mode: each worker writes its metrics to files here.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class Worker:
    """What a worker is told on its command line: its index among the workers, and the
    pipe on which it says that it serves."""

    index: int
    ready_fd: int

    def tell_ready(self) -> None:
        os.write(self.ready_fd, b"\n")
        os.close(self.ready_fd)


def worker_of(argv: list[str]) -> Worker | None:
    """The worker of `--worker INDEX READY_FD`, or None when this process is not one."""
    if len(argv) == 3 and argv[0] == WORKER_FLAG and argv[1].isdigit() and argv[2].isdigit():
        return Worker(int(argv[1]), int(argv[2]))
    return None


def die_with_supervisor() -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies, even by
    SIGKILL, so that no worker keeps serving on its own (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The supervisor may have died before the request took effect.
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def become_supervisor() -> NoReturn:
    """Replace this process, which has loaded the libraries a worker needs, by the
    supervisor, which needs none of them; it keeps its process id, so signals sent to the
    service still reach it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "service.processes"])  # noqa: S606


def claim_address(address: str) -> tuple[str, socket.socket | None]:
    """The address the workers listen on. Port 0 (any free port) becomes one port that
    all of them share, held by a bound socket (not listening, so never handed a
    connection) until the supervisor exits."""
    host, _, port = address.rpartition(":")
    if port != "0":
        return address, None
    family = socket.getaddrinfo(host.strip("[]"), 0, type=socket.SOCK_STREAM)[0][0]
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host.strip("[]"), 0))
    return f"{host}:{holder.getsockname()[1]}", holder


def database_url(config: settings.Settings) -> tuple[str, object]:
    """The URL the workers use, and what keeps an embedded development database alive."""
    if config.database_url is not None:
        return config.database_url, None
    # Only development without a configured database loads the embedded server.
    from service.store import database  # noqa: PLC0415

    embedded = database.prepare_embedded(config.dev_dir)
    return embedded.service_url, embedded


class Supervisor:
    """Starts the workers, forwards signals to them, and knows when they all serve: a
    SIGHUP that arrives before a worker can reload (it would kill it) is held until then,
    so that a rotation during a start is not lost."""

    def __init__(self, config: settings.Settings, env: dict[str, str]) -> None:
        self._config = config
        self._env = env
        self._serving = {
            "address": env["CREDITS_GRPC_ADDR"],
            "env": config.env,
            "processes": config.processes,
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self._ready = 0
        self._reload_held = False

    def forward(self, signum: int, frame: object) -> None:
        self.stopping = self.stopping or signum in STOP_SIGNALS
        # Counted against the workers to start, not those started: a SIGHUP between
        # "supervising" and the first worker's start is held too.
        if signum == signal.SIGHUP and self._ready < self._config.processes:
            self._reload_held = True
            return
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    def run(self) -> None:
        """Until a stop signal, or until a worker stops on its own."""
        ready_read, ready_write = os.pipe()
        try:
            for index in range(self._config.processes):
                command = [sys.executable, "-m", "service", WORKER_FLAG, str(index)]
                self.workers.append(
                    subprocess.Popen(  # noqa: S603 (our own command)
                        [*command, str(ready_write)], env=self._env, pass_fds=(ready_write,)
                    )
                )
        finally:
            os.close(ready_write)
        with os.fdopen(ready_read, "rb", buffering=0) as ready:
            while not self.stopping and all(w.poll() is None for w in self.workers):
                if self._ready < len(self.workers) and select.select([ready], [], [], 0)[0]:
                    self._ready += len(ready.read(len(self.workers)) or b"")
                    if self._ready == self._config.processes:
                        log.info("serving", extra=self._serving)
                        self._release_reload()
                time.sleep(POLL_SECONDS)
        if not self.stopping:
            log.error("a worker stopped on its own; stopping the others")

    @property
    def reload_held(self) -> bool:
        return self._reload_held

    def _release_reload(self) -> None:
        if self._reload_held:
            self._reload_held = False
            self.forward(signal.SIGHUP, None)


def supervise(config: settings.Settings) -> int:
    """Run config.processes workers until a signal stops them; the exit status."""
    url, _embedded = database_url(config)
    address, holder = claim_address(config.grpc_addr)
    env = {**os.environ, "CREDITS_DATABASE_URL": url, "CREDITS_GRPC_ADDR": address}
    with contextlib.ExitStack() as held:
        if holder is not None:
            held.callback(holder.close)
        if config.metrics_addr:
            metrics_dir = held.enter_context(metrics.processes_directory())
            env[METRICS_DIR_ENV] = metrics_dir
            metrics.serve_processes(config.metrics_addr, metrics_dir)
        supervisor = Supervisor(config, env)
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, supervisor.forward)
        # Only now that a SIGHUP is handled (not fatal) may it be sent through the file.
        held.enter_context(pidfile.held(config.pid_file))
        log.info("supervising", extra={"processes": config.processes, "address": address})
        try:
            supervisor.run()
        finally:
            stop_all(supervisor.workers, config.shutdown_grace_seconds + EXIT_MARGIN_SECONDS)
    codes = [w.returncode for w in supervisor.workers]
    stopped_as_asked = all(code in (0, *(-s for s in STOP_SIGNALS)) for code in codes)
    return 0 if supervisor.stopping and stopped_as_asked else 1


def stop_all(workers: list[subprocess.Popen[bytes]], timeout_seconds: float) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("a worker did not stop in time; killed", extra={"pid": worker.pid})
            worker.kill()
            worker.wait()


def main() -> None:
    logs.configure()
    try:
        config = settings.load()
    except settings.SettingsError as exc:
        print(f"credits service cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(supervise(config))
    except pidfile.PidFileError as exc:
        print(f"credits service cannot start: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
