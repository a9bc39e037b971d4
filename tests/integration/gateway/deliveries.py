"""Helpers of the gateway's integration tests: the gateway as it runs (its app under
uvicorn on an ephemeral port, its own mTLS client to a real credits service) and
deliveries signed the way Stripe signs them."""

import asyncio
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import stripe
import uvicorn

from gateway.app import Gateway, create_app
from gateway.connections import ConnectionLimits
from gateway.metrics import GatewayMetrics
from gateway.packages import DEVELOPMENT_TABLE_TOML, parse_table
from gateway.server import CONNECTION_LIMITS, uvicorn_config
from gateway.service_calls import ServiceCalls, open_channel
from gateway.settings import Address
from gateway.stripe_api import Charges

# Signed as stored: tests/fixtures/stripe/README.md says where they come from.
STRIPE_FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "stripe"
SECRET = "whsec_integration_current_0123456789"
# The endpoint's previous secret, still accepted while the rotation runs.
ROTATED_SECRET = "whsec_integration_previous_012345678"
STARTUP_SECONDS_MAX = 10.0
HTTP_TIMEOUT_SECONDS = 30.0

# An account's available credits (the `balance` fixture).
BalanceReader = Callable[[str], Awaitable[int]]

# The ids the fixture scenario uses, and the kind of id each one is.
FIXTURE_IDS = {
    "acct_demo_42": "account",
    "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY": "session",
    "pi_1PgafyB7WZ01zgkWSjxsAJo3": "payment_intent",
    "ch_1PgafuB7WZ01zgkWXYmPNZs8": "charge",
    "dp_1Pgc71B7WZ01zgkWMevJiAUx": "dispute",
}


def fixture_bytes(name: str) -> bytes:
    """A fixture event exactly as stored."""
    return (STRIPE_FIXTURES / f"{name}.json").read_bytes()


def sign(body: bytes, *secrets: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header: one v1 signature per secret, as Stripe sends them
    while an endpoint has two secrets."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    headers: list[str] = [
        stripe.WebhookSignature.generate_signature_header(body.decode(), secret, signed_at)
        for secret in secrets or (SECRET,)
    ]
    signatures = [header.split(",v1=")[1] for header in headers]
    return f"t={signed_at}" + "".join(f",v1={s}" for s in signatures)


@dataclass
class Purchase:
    """One customer's purchase scenario: the fixture events with ids of its own, so
    tests that share one database never meet. Edits are textual, so each body keeps the
    fixture's exact layout."""

    ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        token = uuid.uuid4().hex
        prefixes = {
            "account": "acct_gw_",
            "session": "cs_test_gw",
            "payment_intent": "pi_gw",
            "charge": "ch_gw",
            "dispute": "dp_gw",
        }
        for fixture_id, kind in FIXTURE_IDS.items():
            self.ids[fixture_id] = prefixes[kind] + token

    @property
    def account(self) -> str:
        return self.ids["acct_demo_42"]

    def event(self, name: str, edits: dict[str, str] | None = None) -> bytes:
        text = fixture_bytes(name).decode()
        text = re.sub(r'"id": "evt_\w+"', f'"id": "evt_gw{uuid.uuid4().hex}"', text, count=1)
        for old, new in self.ids.items():
            text = text.replace(old, new)
        for old, new in (edits or {}).items():
            assert old in text, f"{old!r} is not in {name}"
            text = text.replace(old, new)
        return text.encode()


@dataclass
class RunningGateway:
    url: str
    metrics: GatewayMetrics
    server: uvicorn.Server
    task: "asyncio.Task[None]"
    channel: Any

    async def post(
        self,
        client: httpx.AsyncClient,
        body: bytes,
        signature: str | bytes | None = "sign",
        path: str = "/stripe/webhook",
    ) -> httpx.Response:
        """`signature` is "sign" (a valid one), None (no header) or the header itself;
        bytes go on the wire as they are."""
        if signature == "sign":
            signature = sign(body)
        headers = {b"Content-Type": b"application/json"}
        if signature is not None:
            value = signature if isinstance(signature, bytes) else signature.encode()
            headers[b"Stripe-Signature"] = value
        return await client.post(self.url + path, content=body, headers=headers)

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        await self.channel.close()


async def start_gateway(
    service_address: str,
    pki: Path,
    limits: ConnectionLimits = CONNECTION_LIMITS,
    charges: Charges | None = None,
) -> RunningGateway:
    """The production app, client and uvicorn settings; only the port is ephemeral (and
    the connection limits, for tests that wait for a deadline; and Stripe's API, None as
    without an API key)."""
    metrics = GatewayMetrics()
    channel = open_channel(
        service_address,
        (pki / "ca.pem").read_bytes(),
        (pki / "gateway.pem").read_bytes(),
        (pki / "gateway.key").read_bytes(),
    )
    gateway = Gateway(
        secrets=(SECRET, ROTATED_SECRET),
        packages=parse_table(DEVELOPMENT_TABLE_TOML),
        account_metadata_key="",
        credits=ServiceCalls(channel, metrics),
        metrics=metrics,
        charges=charges,
    )
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(create_app(gateway), Address("127.0.0.1", port), limits))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    for _ in range(int(STARTUP_SECONDS_MAX / 0.05)):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    running = RunningGateway(f"http://127.0.0.1:{port}", metrics, server, task, channel)
    if not server.started:
        await running.stop()
        raise AssertionError("the gateway did not start")
    return running
