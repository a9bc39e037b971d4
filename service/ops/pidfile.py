"""The service's pid file (CREDITS_PID_FILE): the one process to signal. With several
processes it names the supervisor, which forwards SIGHUP and SIGTERM to every worker;
with one, the service itself. A matching of command lines (`pkill -f`) cannot tell this
service from another one on the host, nor the supervisor from its workers.

The file is written when the service starts and removed when it exits, unless it was
killed: a file left behind names a process that is gone (or no longer the service),
which the next start overwrites and `signal_service` refuses to signal."""

import contextlib
import itertools
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

# How the service appears in its command line: `python -m service` (one process, or the
# moment before it becomes the supervisor) and `python -m service.processes`.
SERVICE_MODULES = ("service", "service.processes")


class PidFileError(Exception):
    """The pid file cannot be used; the message says why."""


def read(path: Path) -> int | None:
    """The pid the file names, None when there is no file or no pid in it."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def is_service(pid: int) -> bool:
    """Whether `pid` is a live process of this service (not one that reused the pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        command = process.cmdline()
    except psutil.Error:
        return False
    return any(
        flag == "-m" and module in SERVICE_MODULES for flag, module in itertools.pairwise(command)
    )


def write(path: Path) -> None:
    """Name this process in `path`, unless the file names another running service."""
    running = read(path)
    if running is not None and running != os.getpid() and is_service(running):
        raise PidFileError(f"CREDITS_PID_FILE names a service that is running (pid {running})")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then renamed: a reader never sees a half-written pid.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as temporary:
        temporary.write(f"{os.getpid()}\n")
    os.replace(temporary.name, path)


def remove(path: Path) -> None:
    """Remove `path` if it still names this process."""
    if read(path) == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def held(path: Path | None) -> Iterator[None]:
    """The pid file names this process while the block runs (nothing when `path` is None)."""
    if path is None:
        yield
        return
    write(path)
    try:
        yield
    finally:
        remove(path)


def signal_service(path: Path, signum: signal.Signals) -> int:
    """Send `signum` to the service that `path` names; its pid."""
    pid = read(path)
    if pid is None:
        raise PidFileError(f"no service is running: {path} does not name one")
    if not is_service(pid):
        raise PidFileError(f"no service is running: {path} names pid {pid}, which is not it")
    os.kill(pid, signum)
    return pid
