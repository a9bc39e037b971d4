"""The background work `python -m service` starts does not hang on an unrelated setting:
with the scheduled reconcile off (CREDITS_RECONCILE_INTERVAL_SECONDS=0) the webhook
worker still delivers events (it used to start only with the schedule on)."""

import asyncio
import time
from pathlib import Path

import httpx

from credits.v1.credits_pb2_grpc import CreditsServiceStub
from scripts.devcallers import ensure_dev_callers
from tests.integration.test_webhooks import receiving
from tests.service_process import ServiceProcess, production_env
from tests.support import free_port, funded_account, open_channel

ARRIVAL_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.2
HTTP_TIMEOUT_SECONDS = 10.0


async def test_webhooks_are_delivered_with_the_scheduled_reconcile_off(
    tmp_path: Path, database_url: str, pki: Path
) -> None:
    ensure_dev_callers(pki / "callers.toml")
    secret = tmp_path / "webhook-secret"
    secret.write_text("background-test-secret\n")
    metrics_port = free_port()
    with receiving() as receiver:
        env = production_env(
            database_url,
            pki,
            free_port(),
            CREDITS_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
            CREDITS_RECONCILE_INTERVAL_SECONDS="0",
            CREDITS_WEBHOOK_URL=receiver.url,
            CREDITS_WEBHOOK_SECRET_FILE=str(secret),
        )
        service = await asyncio.to_thread(ServiceProcess, env)
        with await asyncio.to_thread(service.__enter__):
            deadline = time.monotonic() + ARRIVAL_WAIT_SECONDS
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as http:
                # The worker says its lag once it holds the endpoint's cursor: events
                # from then on go to the receiver.
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                while "credits_webhook_lag_seconds{" not in (await http.get(url)).text:
                    assert time.monotonic() < deadline, "no webhook worker started"
                    await asyncio.sleep(POLL_SECONDS)
            async with open_channel(pki, "ops", service.address) as channel:
                account = await funded_account(CreditsServiceStub(channel), 100)
            while not receiver.events_of(account):
                assert time.monotonic() < deadline, "the grant's event was not delivered"
                await asyncio.sleep(POLL_SECONDS)
