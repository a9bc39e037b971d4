"""The README's promise, checked as a user would: `make run`'s runner serves over mTLS
with the development certificates, grpcurl finds the service by reflection, the
documented Grant → Reserve → Confirm → GetBalance flow gives the documented balance,
the data survives a restart, and reconcile is clean."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devsend import deliver

REPO = Path(__file__).resolve().parents[2]
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"
SERVICE = "credits.v1.CreditsService"
STARTUP_SECONDS_MAX = 120.0
STOP_SECONDS_MAX = 30.0
GRPCURL_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevRun:
    """`python -m scripts.devrun` (what `make run` runs) on free ports and its own .dev/."""

    def __init__(self, dev_dir: Path) -> None:
        self.dev_dir = dev_dir
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "CREDITS_DEV_DIR": str(dev_dir),
            "CREDITS_GRPC_ADDR": self.address,
            "CREDITS_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "CREDITS_GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
            "CREDITS_GATEWAY_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "CREDITS_GATEWAY_SERVICE_TARGET": self.address,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log = (self.dev_dir.parent / "devrun.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scripts.devrun"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_SECONDS_MAX
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.dev_dir.parent / "devrun.log").read_text(errors="replace")
                pytest.fail(f"make run's runner exited during start-up:\n{log[-3000:]}")
            if self.grpcurl("list").returncode == 0:
                return
            time.sleep(0.5)
        pytest.fail("the service did not come up")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=STOP_SECONDS_MAX)

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


@pytest.fixture
def devrun(tmp_path: Path) -> Iterator[DevRun]:
    run = DevRun(tmp_path / "dev")
    yield run
    if run.process is not None and run.process.poll() is None:
        try:
            run.stop()
        finally:
            if run.process.poll() is None:  # it did not stop in time
                run.process.kill()
                run.process.wait()


def test_the_readme_flow_against_make_run(devrun: DevRun) -> None:
    devrun.start()
    listed = devrun.grpcurl("list")
    assert SERVICE in listed.stdout.split()
    described = devrun.grpcurl("describe", SERVICE)
    assert "rpc Reserve" in described.stdout

    account = "acct_demo_readme"
    devrun.call(
        "Grant",
        {
            "account_id": account,
            "amount": 1000,
            "source": "GRANT_SOURCE_PURCHASE",
            "idempotency_key": "readme-grant-1",
        },
    )
    reserved = devrun.call(
        "Reserve", {"account_id": account, "amount": 300, "idempotency_key": "readme-reserve-1"}
    )
    reservation = reserved["reservation"]
    assert isinstance(reservation, dict)
    devrun.call(
        "Confirm",
        {"account_id": account, "reservation_id": reservation["reservation_id"], "amount": 200},
    )
    balance = devrun.call("GetBalance", {"account_id": account})
    assert (balance.get("available"), balance.get("reserved", "0")) == ("800", "0")

    assert devrun.stop() == 0
    devrun.start()
    assert devrun.call("GetBalance", {"account_id": account}).get("available") == "800"
    assert devrun.stop() == 0

    reconciled = subprocess.run(
        [sys.executable, "-m", "scripts.devrun", "--reconcile"],
        cwd=REPO,
        env=devrun.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "0 discrepancies" in reconciled.stdout


FIXTURES = REPO / "tests" / "fixtures" / "stripe"


def test_the_stripe_scenario_against_make_run(devrun: DevRun) -> None:
    """Purchase → partial refund → dispute lost, as Stripe delivers them (each twice),
    with the balance right at every step."""
    devrun.start()
    secret = (devrun.dev_dir / "stripe-webhook-secret").read_text().strip()
    url = f"http://{devrun.env['CREDITS_GATEWAY_ADDR']}/stripe/webhook"
    account = "acct_demo_42"
    steps = [
        ("checkout.session.completed.json", 1000),
        ("checkout.session.async_payment_succeeded.json", 1000),
        ("charge.refunded.json", 600),
        ("refund.created.json", 600),
        ("charge.dispute.created.json", 0),
        ("charge.dispute.closed.lost.json", 0),
    ]
    for name, available in steps:
        for _ in range(2):
            status, _ = deliver(url, (FIXTURES / name).read_bytes(), secret)
            assert 200 <= status < 300, name
        balance = devrun.call("GetBalance", {"account_id": account})
        assert int(str(balance.get("available", "0"))) == available, name
