"""Every expression of the alert rules and of the Grafana dashboard names only metrics the
processes export: a service and a gateway run, serve a little traffic of every kind the
expressions look at, a real Prometheus scrapes both, and each expression is evaluated
through its HTTP API without error, every metric it names having series. The service
delivers its webhooks to a receiver the test runs, which fails the first event until it
is given up on, so that every webhook series exists."""

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from credits.v1 import credits_pb2, credits_pb2_grpc
from scripts.devcallers import ensure_dev_callers
from service.store.sampling import EVENTS_WRITTEN_SAMPLE_INTERVAL_SECONDS
from tests.integration.gateway.deliveries import Purchase, sign
from tests.integration.gateway.test_gateway_process import (
    production_env as gateway_env,
)
from tests.integration.gateway.test_gateway_process import run_gateway, wait_healthy
from tests.integration.test_webhooks import Receiver, receiving
from tests.prometheus_support import DASHBOARD, RULES, alert_rules, metric_names, tool
from tests.service_process import ServiceProcess
from tests.service_process import production_env as service_env
from tests.support import CALL_TIMEOUT_SECONDS, free_port, new_id, open_channel

SCRAPE_INTERVAL = "1s"
# Grafana's own variable; any window of a few scrapes stands for it here.
RATE_INTERVAL = "1m"
PROMETHEUS_READY_SECONDS_MAX = 30.0
SERIES_WAIT_SECONDS_MAX = 20.0
# Reserve limit of the service under test: a second Reserve at once is refused.
RESERVE_RATE = "1/minute"
HTTP_TIMEOUT_SECONDS = 10.0
# The receiver fails this many POSTs: the first event's two attempts, after which it is
# given up on (CREDITS_WEBHOOK_RETRY_HOURS is shorter than the first backoff, 0.5 s at
# least); the events after it are delivered.
RECEIVER_FAILURES = 2
WEBHOOK_RETRY_HOURS = str(0.3 / 3600)
DELIVERER_START_SECONDS_MAX = 30.0
# The sampler reads the outbox's count when it starts and every 10 s after: two periods
# and a margin for the count to move after the traffic.
EVENTS_SAMPLED_SECONDS_MAX = 2 * EVENTS_WRITTEN_SAMPLE_INTERVAL_SECONDS + 10.0


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        target["expr"].replace("$__rate_interval", RATE_INTERVAL)
        for panel in document["panels"]
        for target in panel.get("targets", [])
    ]


def rule_expressions() -> list[str]:
    return [str(rule["expr"]) for rule in alert_rules()]


def test_the_expressions_are_found() -> None:
    """The scan below reads what it should: every panel and rule, each naming a metric."""
    assert len(dashboard_expressions()) >= 20
    assert len(rule_expressions()) == len(alert_rules())
    for expression in dashboard_expressions() + rule_expressions():
        assert metric_names(expression), expression
    assert metric_names('sum(rate(credits_rpcs_total{method="credits_x"}[5m]))') == {
        "credits_rpcs_total"
    }


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The service's webhook endpoint, failing its first RECEIVER_FAILURES POSTs."""
    with receiving(RECEIVER_FAILURES) as running:
        yield running


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus on a free loopback port; its config file is written by the test."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("scrape_configs: []\n")
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}", config
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def drive_service(pki: Path, address: str) -> None:
    """Calls that make every labelled series of the service exist: finished jobs of both
    outcomes, refusals, a rate-limit refusal."""
    async with (
        open_channel(pki, "gateway", address) as granting,
        open_channel(pki, "backend", address) as using,
    ):
        gateway = credits_pb2_grpc.CreditsServiceStub(granting)
        backend = credits_pb2_grpc.CreditsServiceStub(using)
        account = new_id()
        await gateway.Grant(
            credits_pb2.GrantRequest(
                account_id=account,
                amount=1000,
                source=credits_pb2.GRANT_SOURCE_PURCHASE,
                idempotency_key=new_id("grant"),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        held = await backend.Reserve(
            credits_pb2.ReserveRequest(
                account_id=account, amount=100, idempotency_key=new_id("hold"), job_type="render"
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        reservation = held.reservation.reservation_id
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await backend.Reserve(
                credits_pb2.ReserveRequest(
                    account_id=account, amount=1, idempotency_key=new_id("hold")
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        assert limited.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await backend.Confirm(
            credits_pb2.ConfirmRequest(account_id=account, reservation_id=reservation, amount=40),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        with pytest.raises(grpc.aio.AioRpcError):  # RESERVATION_NOT_ACTIVE
            await backend.Release(
                credits_pb2.ReleaseRequest(account_id=account, reservation_id=reservation),
                timeout=CALL_TIMEOUT_SECONDS,
            )


async def deliverer_started(http: httpx.AsyncClient, metrics_url: str) -> None:
    """The service's webhook worker holds its endpoint's cursor (it says its lag, 0 when
    it finds nothing to deliver): events from now on go to the receiver."""
    deadline = time.monotonic() + DELIVERER_START_SECONDS_MAX
    while "credits_webhook_lag_seconds{" not in (await http.get(metrics_url)).text:
        assert time.monotonic() < deadline, "the webhook worker did not start"
        await asyncio.sleep(0.2)


async def query(http: httpx.AsyncClient, base: str, expression: str) -> list[object]:
    answer = (await http.get(f"{base}/api/v1/query", params={"query": expression})).json()
    assert answer["status"] == "success", f"{expression}: {answer}"
    result = answer["data"]["result"]
    assert isinstance(result, list), expression
    return result


async def test_every_rule_and_panel_expression_resolves_against_a_scraped_service_and_gateway(
    tmp_path: Path,
    database_url: str,
    *,
    pki: Path,
    http: httpx.AsyncClient,
    prometheus: tuple[str, Path],
    receiver: Receiver,
) -> None:
    ensure_dev_callers(pki / "callers.toml")
    service_metrics, gateway_metrics = free_port(), free_port()
    secret = tmp_path / "webhook-secret"
    secret.write_text("live-test-webhook-secret\n")
    env = service_env(
        database_url,
        pki,
        free_port(),
        CREDITS_METRICS_ADDR=f"127.0.0.1:{service_metrics}",
        CREDITS_JOB_TYPES="render",
        CREDITS_RESERVE_RATE_PER_ACCOUNT=RESERVE_RATE,
        CREDITS_RECONCILE_INTERVAL_SECONDS="1",
        CREDITS_WEBHOOK_URL=receiver.url,
        CREDITS_WEBHOOK_SECRET_FILE=str(secret),
        CREDITS_WEBHOOK_RETRY_HOURS=WEBHOOK_RETRY_HOURS,
    )
    service = await asyncio.to_thread(ServiceProcess, env)
    with await asyncio.to_thread(service.__enter__):
        await deliverer_started(http, f"http://127.0.0.1:{service_metrics}/metrics")
        await drive_service(pki, service.address)
        # A reload that takes: the reload counter's series.
        service.signal(signal.SIGHUP)
        await asyncio.to_thread(service.wait_for_log, lambda e: e.get("msg") == "reloaded")

        port = free_port()
        environment = gateway_env(tmp_path, pki, service.address, port, gateway_metrics)
        url = f"http://127.0.0.1:{port}"
        async with run_gateway(environment) as gateway:
            await wait_healthy(http, url, gateway)
            body = Purchase().event("checkout.session.completed")
            taken = await http.post(
                url + "/stripe/webhook", content=body, headers={"Stripe-Signature": sign(body)}
            )
            assert taken.status_code == 200

            base, config = prometheus
            config.write_text(
                f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n"
                f"  evaluation_interval: {SCRAPE_INTERVAL}\n"
                f"rule_files: ['{RULES}']\n"
                "scrape_configs:\n"
                "  - job_name: credits\n"
                f"    static_configs: [{{targets: ['127.0.0.1:{service_metrics}']}}]\n"
                "  - job_name: credits-gateway\n"
                f"    static_configs: [{{targets: ['127.0.0.1:{gateway_metrics}']}}]\n"
            )
            deadline = time.monotonic() + PROMETHEUS_READY_SECONDS_MAX
            while True:
                try:
                    if (await http.post(f"{base}/-/reload")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "prometheus did not start"
                await asyncio.sleep(0.2)

            expressions = rule_expressions() + dashboard_expressions()
            names = set().union(*(metric_names(e) for e in expressions))
            missing = names
            deadline = time.monotonic() + SERIES_WAIT_SECONDS_MAX
            while missing and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                missing = {n for n in names if not await query(http, base, n)}
            assert not missing, f"named by an expression, exported by no process: {missing}"

            for expression in expressions:
                await query(http, base, expression)
            # The service's own schedule ran (on its role's grants) and said so.
            completed = "credits_reconcile_last_completed_timestamp_seconds > 0"
            while not await query(http, base, completed):
                assert time.monotonic() < deadline, "no scheduled reconcile completed"
                await asyncio.sleep(0.5)
            assert not await query(http, base, "credits_reconcile_discrepancies > 0")
            # The webhook series the alerts select, and the events the traffic wrote.
            for selector in (
                'credits_webhook_attempts_total{result="failed"} >= 2',
                'credits_webhook_attempts_total{result="delivered"} > 0',
                "credits_webhook_given_up_total > 0",
            ):
                assert await query(http, base, selector), selector
            deadline = time.monotonic() + EVENTS_SAMPLED_SECONDS_MAX
            while not await query(http, base, "credits_events_written_total > 0"):
                assert time.monotonic() < deadline, "no events written were counted"
                await asyncio.sleep(0.5)
            groups = (await http.get(f"{base}/api/v1/rules")).json()["data"]["groups"]
            loaded = [rule for group in groups for rule in group["rules"]]
            assert len(loaded) == len(alert_rules())
            assert all(rule["health"] != "err" for rule in loaded), loaded
