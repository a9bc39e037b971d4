"""`python -m service` as a child process of a test: production settings on an ephemeral
port, its stderr (the JSON log stream) collected line by line, and a stop that always
happens (use it as a context manager)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
LOG_WAIT_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.05


def production_env(database_url: str, pki: Path, port: int, **env: str) -> dict[str, str]:
    """A scrubbed production environment: nothing of the test's own is inherited."""
    return {
        "PATH": os.environ["PATH"],
        "CREDITS_ENV": "production",
        "CREDITS_DATABASE_URL": database_url,
        "CREDITS_GRPC_ADDR": f"127.0.0.1:{port}",
        "CREDITS_TLS_CA_FILE": str(pki / "ca.pem"),
        "CREDITS_TLS_CERT_FILE": str(pki / "server.pem"),
        "CREDITS_TLS_KEY_FILE": str(pki / "server.key"),
        "CREDITS_CALLERS_FILE": str(pki / "callers.toml"),
        **env,
    }


class ServiceProcess:
    """One `python -m service`; `lines` is everything it wrote to stderr so far."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.address = str(env["CREDITS_GRPC_ADDR"])
        self.lines: list[str] = []
        self._process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=dict(env),
            cwd=REPOSITORY,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self.lines.append(line.rstrip("\n"))

    def __enter__(self) -> "ServiceProcess":
        try:
            self.wait_for_log(lambda e: e.get("msg") == "serving", START_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def entries(self) -> list[dict[str, Any]]:
        """Every stderr line as JSON; fails on the first line that is not."""
        parsed = []
        for line in list(self.lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON log line: {line!r}") from None
            assert isinstance(entry, dict), line
            parsed.append(entry)
        return parsed

    def wait_for_log(
        self,
        matches: Callable[[dict[str, Any]], bool],
        timeout_seconds: float = LOG_WAIT_TIMEOUT_SECONDS,
    ) -> dict[str, Any]:
        """The first log entry that `matches`, waiting for it to be written."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            for entry in self.entries():
                if matches(entry):
                    return entry
            if self._process.poll() is not None and not self._reader.is_alive():
                raise AssertionError("the service stopped: " + "\n".join(self.lines[-20:]))
            if time.monotonic() > deadline:
                raise AssertionError("no such log line: " + "\n".join(self.lines[-20:]))
            time.sleep(POLL_SECONDS)

    @property
    def pid(self) -> int:
        return self._process.pid

    def signal(self, sig: signal.Signals) -> None:
        self._process.send_signal(sig)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not stop in time; the exit code."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(timeout=STOP_TIMEOUT_SECONDS)
        return self._process.returncode
