"""`python -m gateway` as it is started: settings from the environment, refusal to start
without them, a delivery end to end, metrics, JSON logs that hold nothing secret, and a
clean stop on SIGTERM."""

import asyncio
import json
import os
import signal
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx

from gateway.devsend import deliver
from gateway.packages import write_development_table
from tests.integration.gateway.deliveries import (
    SECRET,
    BalanceReader,
    Purchase,
    sign,
)
from tests.support import RunningServer, child_process, free_port

STARTUP_SECONDS_MAX = 15.0
STOP_SECONDS_MAX = 20.0
REPO_ROOT = Path(__file__).resolve().parents[3]


def production_env(
    tmp_path: Path, pki: Path, service: str, port: int, metrics_port: int
) -> dict[str, str]:
    secret_file = tmp_path / "stripe-webhook-secret"
    secret_file.write_text(SECRET + "\n")
    packages = tmp_path / "credit-packages.toml"
    write_development_table(packages)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    return {
        **inherited,
        "CREDITS_ENV": "production",
        "CREDITS_GATEWAY_ADDR": f"127.0.0.1:{port}",
        "CREDITS_GATEWAY_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "CREDITS_GATEWAY_SERVICE_TARGET": service,
        "CREDITS_GATEWAY_CA_FILE": str(pki / "ca.pem"),
        "CREDITS_GATEWAY_CERT_FILE": str(pki / "gateway.pem"),
        "CREDITS_GATEWAY_KEY_FILE": str(pki / "gateway.key"),
        "CREDITS_STRIPE_WEBHOOK_SECRET_FILE": str(secret_file),
        "CREDITS_GATEWAY_PACKAGES_FILE": str(packages),
    }


def run_gateway(env: dict[str, str]) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """`python -m gateway`, killed when the block ends unless the test stopped it.
    Asynchronous: the service the gateway calls runs on this test's event loop."""
    return child_process(
        sys.executable,
        "-m",
        "gateway",
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop(process: asyncio.subprocess.Process) -> bytes:
    """SIGTERM, then what the process wrote to stderr until it exited."""
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), STOP_SECONDS_MAX)
    return stderr


async def wait_healthy(
    http: httpx.AsyncClient, url: str, process: asyncio.subprocess.Process
) -> None:
    for _ in range(int(STARTUP_SECONDS_MAX / 0.1)):
        if process.returncode is not None:
            break
        try:
            if (await http.get(url + "/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the gateway process did not become healthy")


async def test_the_process_serves_deliveries_and_stops_cleanly(
    tmp_path: Path,
    pki: Path,
    credits_server: RunningServer,
    http: httpx.AsyncClient,
    balance: BalanceReader,
) -> None:
    port, metrics_port = free_port(), free_port()
    env = production_env(tmp_path, pki, credits_server.address, port, metrics_port)
    url = f"http://127.0.0.1:{port}"
    purchase = Purchase()
    body = purchase.event("checkout.session.completed")
    signature = sign(body)
    async with run_gateway(env) as process:
        await wait_healthy(http, url, process)

        response = await http.post(
            url + "/stripe/webhook", content=body, headers={"Stripe-Signature": signature}
        )
        assert response.status_code == 200
        assert await balance(purchase.account) == 1000
        rejected = await http.post(url + "/stripe/webhook", content=body)
        assert rejected.status_code == 400
        # The development sender signs and delivers the same way (a replay: no new grant).
        replayed = await asyncio.to_thread(deliver, url + "/stripe/webhook", body, SECRET)
        assert replayed == (200, '{"received":true}')
        assert await balance(purchase.account) == 1000
        metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert 'outcome="granted",status="200"' in metrics
        assert 'credits_gateway_service_calls_total{code="OK",rpc="Grant"} 2.0' in metrics
        stderr = await stop(process)

    assert process.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines()]
    webhook_lines = [line for line in lines if line["msg"] == "webhook"]
    assert [(line["outcome"], line["status"]) for line in webhook_lines] == [
        ("granted", 200),
        ("bad_signature", 400),
        ("replayed", 200),
    ]
    assert webhook_lines[0]["event_type"] == "checkout.session.completed"
    assert webhook_lines[0]["stripe_payment_intent"] == purchase.ids["pi_1PgafyB7WZ01zgkWSjxsAJo3"]
    log_text = stderr.decode()
    for secret_or_personal in (
        SECRET,
        signature.split("v1=")[1],
        "Jenny Rosen",
        "example@example.com",
    ):
        assert secret_or_personal not in log_text
    assert lines[-1]["msg"] == "gateway stopped"


async def test_outside_development_the_process_refuses_to_start_without_its_settings(
    tmp_path: Path,
) -> None:
    secret = "whsec_must_never_be_printed_0123"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    env["CREDITS_STRIPE_WEBHOOK_SECRETS"] = secret
    env["CREDITS_GATEWAY_CA_FILE"] = str(tmp_path / "missing-ca.pem")

    async with run_gateway(env) as process:
        _, stderr = await asyncio.wait_for(process.communicate(), STOP_SECONDS_MAX)

    assert process.returncode == 2
    (line,) = [json.loads(line) for line in stderr.decode().splitlines()]
    assert line["msg"] == "gateway cannot start"
    assert "CREDITS_GATEWAY_SERVICE_TARGET is not set" in line["problems"]
    assert "CREDITS_GATEWAY_CA_FILE does not name a readable PEM file" in line["problems"]
    assert secret not in stderr.decode()
    assert "missing-ca" not in stderr.decode()
