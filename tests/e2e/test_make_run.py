"""The README's promise, checked as a user would: `make run`'s runner serves over mTLS
with the development certificates, grpcurl finds the service by reflection, the
documented Grant → Reserve → Confirm → GetBalance flow gives the documented balance,
the data survives a restart, reconcile is clean, and `make reload` reaches the service
through `.dev/service.pid`."""

import json
import subprocess
import sys
import time

from gateway.devsend import deliver
from service.ops import pidfile
from tests.e2e.runner import REPO, SERVICE, DevRun

RELOAD_SECONDS_MAX = 30.0
RELOAD_POLL_SECONDS = 0.2


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


def reloaded_lines(devrun: DevRun) -> list[dict[str, object]]:
    found = []
    for line in devrun.log().splitlines():
        if line.startswith("{") and '"reloaded"' in line:
            entry = json.loads(line)
            if entry.get("msg") == "reloaded" and entry.get("file") == "CREDITS_CALLERS_FILE":
                found.append(entry)
    return found


def test_make_reload_reaches_the_service_of_make_run(devrun: DevRun) -> None:
    devrun.start()
    pid_file = devrun.dev_dir / "service.pid"
    assert pidfile.is_service(pidfile.read(pid_file) or 0)
    reloaded = subprocess.run(
        ["make", "--no-print-directory", "reload"],
        cwd=REPO,
        env=devrun.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    deadline = time.monotonic() + RELOAD_SECONDS_MAX
    while not reloaded_lines(devrun):
        assert time.monotonic() < deadline, devrun.log()[-3000:]
        time.sleep(RELOAD_POLL_SECONDS)
    # Reloaded, not stopped.
    assert SERVICE in devrun.grpcurl("list").stdout.split()
    assert devrun.stop() == 0
    assert not pid_file.exists()


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
