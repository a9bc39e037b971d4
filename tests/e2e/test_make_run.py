"""The README's promise, checked as a user would: `make run`'s runner serves over mTLS
with the development certificates, grpcurl finds the service by reflection, the
documented Grant → Reserve → Confirm → GetBalance flow gives the documented balance,
the data survives a restart, and reconcile is clean."""

import subprocess
import sys

from gateway.devsend import deliver
from tests.e2e.runner import REPO, SERVICE, DevRun


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
