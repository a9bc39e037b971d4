"""`python -m scripts.devrun` (what `make run` runs) on free ports and its own dev folder,
never `.dev/` or the default ports, and the ways a user stops it."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from http import HTTPStatus
from pathlib import Path

import psutil
import pytest

from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"
SERVICE = "credits.v1.CreditsService"
STARTUP_SECONDS_MAX = 120.0
STOP_SECONDS_MAX = 30.0
GRPCURL_TIMEOUT_SECONDS = 30
POLL_SECONDS = 0.5


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class DevRun:
    """The runner in a session of its own, as a terminal would hold it: a signal to its
    process group is what Ctrl-C sends."""

    def __init__(self, dev_dir: Path) -> None:
        self.dev_dir = dev_dir
        self.address = f"127.0.0.1:{free_port()}"
        # No CREDITS_GATEWAY_SERVICE_TARGET: the gateway must follow CREDITS_GRPC_ADDR.
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
            "CREDITS_DEV_DIR": str(dev_dir),
            "CREDITS_GRPC_ADDR": self.address,
            "CREDITS_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "CREDITS_GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
            "CREDITS_GATEWAY_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        }
        self.log_path = dev_dir.parent / "devrun.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.dev_dir.resolve() / "pgdata"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scripts.devrun"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_SECONDS_MAX
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"make run's runner exited during start-up:\n{self.log()[-3000:]}")
            if self.grpcurl("list").returncode == 0 and self.gateway_up():
                return
            time.sleep(POLL_SECONDS)
        pytest.fail("the service or the gateway did not come up")

    def gateway_up(self) -> bool:
        url = f"http://{self.env['CREDITS_GATEWAY_ADDR']}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=GRPCURL_TIMEOUT_SECONDS) as answer:
                return bool(answer.status == HTTPStatus.OK)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGINT, *, group: bool = False) -> int:
        """Send `signum` to the runner (or its process group, as Ctrl-C does) and wait."""
        assert self.process is not None
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_SECONDS_MAX)

    def postgres(self) -> list[psutil.Process]:
        """Every PostgreSQL process of this dev folder (each works in its data folder)."""
        found = []
        for process in psutil.process_iter(["cwd"]):
            if process.info["cwd"] == str(self.pgdata) and _alive(process):
                found.append(process)
        return found

    def processes(self) -> list[psutil.Process]:
        """The runner, what it started, and the embedded PostgreSQL: all still alive."""
        found = self.postgres()
        if self.process is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                runner = psutil.Process(self.process.pid)
                found += [runner, *runner.children(recursive=True)]
        return [p for p in found if _alive(p)]

    def kill_everything(self) -> None:
        """kill -9 of every process, PostgreSQL's included, as a crash or an OOM killer
        would; nothing gets to clean up."""
        victims = self.processes()
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
        psutil.wait_procs(victims, timeout=STOP_SECONDS_MAX)
        if self.process is not None:
            self.process.wait(timeout=STOP_SECONDS_MAX)

    def grpcurl(
        self, *args: str, body: dict[str, object] | None = None
    ) -> subprocess.CompletedProcess[str]:
        pki = self.dev_dir / "pki"
        tls = [
            "-cacert",
            str(pki / "ca.pem"),
            "-cert",
            str(pki / "ops.pem"),
            "-key",
            str(pki / "ops.key"),
        ]
        data = ["-d", json.dumps(body)] if body is not None else []
        return subprocess.run(
            [GRPCURL, *tls, *data, self.address, *args],
            capture_output=True,
            text=True,
            timeout=GRPCURL_TIMEOUT_SECONDS,
            check=False,
        )

    def call(self, method: str, body: dict[str, object]) -> dict[str, object]:
        done = self.grpcurl(f"{SERVICE}/{method}", body=body)
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout)
        return result
