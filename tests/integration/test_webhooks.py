"""Signed webhooks (service/webhooks.py) against a real receiver: every event POSTed,
signed so that credits_client.verify_webhook accepts it, retried while the endpoint
fails, resumed from the stored cursor after a restart, by one worker at a time."""

import asyncio
import contextlib
import datetime
import http.server
import json
import os
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from credits_client import WebhookSignatureError, verify_webhook
from service import webhook_endpoints, webhooks
from service.ledger.model import EventType
from service.webhook_endpoints import WebhookEndpoint, url_endpoint
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, new_id

SECRET = b"test-webhook-secret"
RETRY = datetime.timedelta(hours=72)
# Shorter than the backoff after a first failure: a second failure gives the event up.
SHORT_RETRY = datetime.timedelta(seconds=0.3)
ARRIVAL_WAIT_SECONDS = 20.0
POLL_SECONDS = 0.05


class Receiver(http.server.ThreadingHTTPServer):
    """An endpoint that answers 500 to its first `failures` POSTs, then 204; each answer
    after `hold_seconds`, counting the POSTs it holds at once."""

    def __init__(self, failures: int = 0, hold_seconds: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.failures = failures
        self.hold_seconds = hold_seconds
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"

    def events_of(self, account: str) -> list[dict[str, Any]]:
        with self.lock:
            received = list(self.received)
        events = [json.loads(body) for _, body in received]
        return [e for e in events if e["account_id"] == account]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        time.sleep(self.server.hold_seconds)
        with self.server.lock:
            self.server.in_flight -= 1
            failing = self.server.failures > 0
            if failing:
                self.server.failures -= 1
            else:
                self.server.received.append((dict(self.headers), body))
        self.send_response(500 if failing else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def receiving(failures: int = 0, hold_seconds: float = 0.0) -> Iterator[Receiver]:
    receiver = Receiver(failures, hold_seconds)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


@contextlib.asynccontextmanager
async def delivering(
    server: RunningServer,
    database_url: str,
    url: str,
    admin_engine: AsyncEngine,
    retry: datetime.timedelta = RETRY,
    *,
    endpoint: WebhookEndpoint | None = None,
) -> AsyncIterator[asyncio.Task[None]]:
    """A worker for `endpoint` (of `url`), signing with its secret file's secret; by
    default CREDITS_WEBHOOK_URL's endpoint of `url`, signing with SECRET."""
    if endpoint is None:
        endpoint, secret = url_endpoint(url, Path(os.devnull)), SECRET
    else:
        secret = webhook_endpoints.secret(endpoint.secret_file)
    deliverer = webhooks.Deliverer(server.store, database_url, endpoint, secret, retry)
    task = asyncio.create_task(deliverer.run())
    try:
        await _started(admin_engine, url)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _started(admin_engine: AsyncEngine, url: str) -> None:
    """The endpoint has its cursor: events from now on go to it."""
    async with asyncio.timeout(ARRIVAL_WAIT_SECONDS):
        while True:
            async with admin_engine.connect() as conn:
                found = await conn.scalar(
                    text("SELECT count(*) FROM webhook_deliveries WHERE endpoint = :url"),
                    {"url": url},
                )
            if found:
                return
            await asyncio.sleep(POLL_SECONDS)


async def _arrived(receiver: Receiver, account: str, count: int) -> list[dict[str, Any]]:
    """The account's events, once `count` have arrived (the receiver runs in a thread of
    its own, so it is polled)."""
    async with asyncio.timeout(ARRIVAL_WAIT_SECONDS):
        while len(receiver.events_of(account)) < count:  # noqa: ASYNC110
            await asyncio.sleep(POLL_SECONDS)
    return receiver.events_of(account)


async def _grant(stub: Stub, account: str, amount: int) -> str:
    response: pb.GrantResponse = await stub.Grant(
        pb.GrantRequest(
            account_id=account,
            amount=amount,
            source=pb.GRANT_SOURCE_PURCHASE,
            idempotency_key=new_id("grant"),
        ),
        timeout=T,
    )
    return response.grant.grant_id


async def test_each_event_is_posted_signed_and_verifiable(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    with receiving() as receiver:
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            account = new_id()
            grant_id = await _grant(ops, account, 10)
            (event,) = await _arrived(receiver, account, 1)
    assert (event["type"], event["grant_id"], event["available_after"]) == (
        "GRANTED",
        grant_id,
        10,
    )
    headers, body = next(
        (h, b) for h, b in receiver.received if json.loads(b)["account_id"] == account
    )
    assert headers[webhooks.EVENT_ID_HEADER] == event["event_id"]
    assert verify_webhook(body, headers[webhooks.SIGNATURE_HEADER], SECRET) == event
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body, headers[webhooks.SIGNATURE_HEADER], b"another secret")
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body + b" ", headers[webhooks.SIGNATURE_HEADER], SECRET)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body, headers[webhooks.SIGNATURE_HEADER], SECRET, tolerance_seconds=-1)


async def test_a_failing_endpoint_is_retried_in_order(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    with receiving(failures=2) as receiver:
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            account = new_id()
            first = await _grant(ops, account, 1)
            second = await _grant(ops, account, 2)
            events = await _arrived(receiver, account, 2)
    assert [e["grant_id"] for e in events] == [first, second]


async def test_failures_in_a_row_are_counted_until_a_delivery(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    """credits_webhook_consecutive_failures, what CreditsWebhookFailing reads: each
    failed attempt adds one, a delivery takes it back to 0."""
    with receiving(failures=3) as receiver:
        label = urllib.parse.urlsplit(receiver.url).netloc

        def in_a_row() -> float | None:
            return REGISTRY.get_sample_value(
                "credits_webhook_consecutive_failures", {"endpoint": label}
            )

        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            account = new_id()
            await _grant(ops, account, 1)
            seen = set()
            async with asyncio.timeout(ARRIVAL_WAIT_SECONDS):
                while not receiver.events_of(account):
                    seen.add(in_a_row())
                    await asyncio.sleep(POLL_SECONDS)
    assert {1.0, 2.0, 3.0} <= seen
    assert in_a_row() == 0


async def test_a_restart_resumes_after_the_last_delivered_event(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    with receiving() as receiver:
        account = new_id()
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            before = await _grant(ops, account, 1)
            await _arrived(receiver, account, 1)
        during = await _grant(ops, account, 2)  # no worker running
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            events = await _arrived(receiver, account, 2)
            await asyncio.sleep(1)
    assert [e["grant_id"] for e in receiver.events_of(account)] == [before, during]
    assert len(events) == 2


async def test_accounts_go_out_side_by_side_each_in_order(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    """Order is promised per account only: a batch's accounts are POSTed at once on
    several connections (an endpoint that takes its time is not a queue), and each
    account's events still arrive in commit order."""
    accounts = [new_id() for _ in range(webhooks.DELIVERY_LANES)]
    with receiving(hold_seconds=0.2) as receiver:
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            pass  # the endpoint's cursor is set: what follows is one batch on restart
        granted = {
            account: [await _grant(ops, account, amount) for amount in (1, 2, 3)]
            for account in accounts
        }
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            arrived = {account: await _arrived(receiver, account, 3) for account in accounts}
    assert {a: [e["grant_id"] for e in events] for a, events in arrived.items()} == granted
    assert receiver.most_in_flight > 1


async def test_a_restart_mid_batch_resumes_after_its_acknowledged_part(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    """The cursor moves while a batch goes out, not only at its end: a worker stopped
    halfway through one account's events sends again only the few after the last save,
    and still every event, in order."""
    account = new_id()
    with receiving(hold_seconds=0.1) as receiver:
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            pass  # the endpoint's cursor is set: the grants below are one batch
        granted = [await _grant(ops, account, amount) for amount in range(1, 13)]
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            halfway = len(await _arrived(receiver, account, 8))
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            async with asyncio.timeout(ARRIVAL_WAIT_SECONDS):
                while {e["grant_id"] for e in receiver.events_of(account)} != set(granted):  # noqa: ASYNC110
                    await asyncio.sleep(POLL_SECONDS)
            await asyncio.sleep(1)
    delivered = [e["grant_id"] for e in receiver.events_of(account)]
    assert list(dict.fromkeys(delivered)) == granted
    sent_again = len(delivered) - len(granted)
    # A whole batch again would be `halfway` or more.
    assert sent_again < halfway - 2


async def test_one_worker_delivers_at_a_time(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    with receiving() as receiver:
        async with (
            delivering(credits_server, database_url, receiver.url, admin_engine),
            delivering(credits_server, database_url, receiver.url, admin_engine),
        ):
            account = new_id()
            granted = [await _grant(ops, account, amount) for amount in (1, 2, 3)]
            await _arrived(receiver, account, 3)
            await asyncio.sleep(1)
    assert [e["grant_id"] for e in receiver.events_of(account)] == granted


async def test_an_event_failing_past_the_retry_window_is_given_up_and_the_next_goes(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    with receiving(failures=2) as receiver:
        label = urllib.parse.urlsplit(receiver.url).netloc
        async with delivering(
            credits_server, database_url, receiver.url, admin_engine, SHORT_RETRY
        ):
            account = new_id()
            await _grant(ops, account, 1)  # fails twice, past the window: given up
            kept = await _grant(ops, account, 2)
            (event,) = await _arrived(receiver, account, 1)
    assert event["grant_id"] == kept
    given_up = REGISTRY.get_sample_value("credits_webhook_given_up_total", {"endpoint": label})
    assert given_up == 1


async def test_a_cursor_past_retention_resumes_at_the_oldest_retained_event(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    with receiving() as receiver:
        async with admin_engine.connect() as conn:
            await conn.execute(
                text(
                    "INSERT INTO webhook_deliveries (endpoint, delivered_position,"
                    " delivered_seq, updated_at) VALUES (:url, 1, 1, now())"
                ),
                {"url": receiver.url},
            )
        await _grant(ops, new_id(), 1)
        # Everything so far is past retention, the endpoint's cursor included.
        await credits_server.store.sweep_events(
            datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        )
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            account = new_id()
            granted = await _grant(ops, account, 5)
            (event,) = await _arrived(receiver, account, 1)
    assert event["grant_id"] == granted


async def _arrived_prices(receiver: Receiver, job_type: str, count: int) -> list[dict[str, Any]]:
    """The job type's price events, once `count` have arrived."""

    def mine() -> list[dict[str, Any]]:
        with receiver.lock:
            received = list(receiver.received)
        events = [json.loads(body) for _, body in received]
        return [e for e in events if e["price"] and e["price"]["job_type"] == job_type]

    async with asyncio.timeout(ARRIVAL_WAIT_SECONDS):
        while len(mine()) < count:  # noqa: ASYNC110
            await asyncio.sleep(POLL_SECONDS)
    return mine()


async def test_a_price_event_is_posted_with_its_version_and_no_account(
    ops: Stub, credits_server: RunningServer, database_url: str, admin_engine: AsyncEngine
) -> None:
    job_type = new_id("page")
    with receiving() as receiver:
        async with delivering(credits_server, database_url, receiver.url, admin_engine):
            response: pb.SetPriceResponse = await ops.SetPrice(
                pb.SetPriceRequest(job_type=job_type, unit_price=12, unit="page", reason="why"),
                timeout=T,
            )
            await ops.SetPrice(pb.SetPriceRequest(job_type=job_type, retire=True), timeout=T)
            account = new_id()
            await _grant(ops, account, 10)
            price_set, price_retired = await _arrived_prices(receiver, job_type, 2)
            (granted,) = await _arrived(receiver, account, 1)
    price = response.price
    assert (price_set["type"], price_set["account_id"], price_set["caller"]) == (
        "PRICE_SET",
        None,
        "ops",
    )
    assert price_set["price"] == {
        "job_type": job_type,
        "version": price.version,
        "unit_price": 12,
        "unit": "page",
        "retired": False,
        "effective_at": price.effective_at.ToDatetime(datetime.UTC).isoformat(),
        "set_at": price.set_at.ToDatetime(datetime.UTC).isoformat(),
        "set_by": "ops",
        "reason": "why",
    }
    assert price_retired["type"] == "PRICE_RETIRED"
    assert price_retired["price"]["retired"] is True
    assert price_retired["price"]["unit_price"] is None
    assert granted["price"] is None


def _endpoints_file(folder: Path, *endpoints: tuple[str, str, list[str] | None]) -> Path:
    """A CREDITS_WEBHOOK_ENDPOINTS_FILE of (name, url, types) with a secret file each,
    whose secret is "secret-<name>"."""
    tables = []
    for name, url, types in endpoints:
        secret_file = folder / f"{name}.secret"
        secret_file.write_text(f"secret-{name}\n")
        table = f'[[endpoint]]\nname = "{name}"\nurl = "{url}"\nsecret_file = "{secret_file}"\n'
        if types is not None:
            table += f"types = {json.dumps(types)}\n"
        tables.append(table)
    path = folder / "endpoints.toml"
    path.write_text("\n".join(tables))
    return path


async def _stored_cursor(admin_engine: AsyncEngine, url: str) -> tuple[int, int]:
    async with admin_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT delivered_position, delivered_seq FROM webhook_deliveries"
                    " WHERE endpoint = :url"
                ),
                {"url": url},
            )
        ).one()
    return row.delivered_position, row.delivered_seq


async def test_endpoints_of_the_file_each_get_their_own_types_signed_with_their_own_secret(
    ops: Stub,
    credits_server: RunningServer,
    database_url: str,
    admin_engine: AsyncEngine,
    tmp_path: Path,
    *,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CREDITS_WEBHOOK_ENDPOINTS_FILE: an endpoint of every type and one of BALANCE_LOW
    only, each with its own worker, secret and cursor. The filtered one gets the alert
    alone, and its cursor moves past the events it does not get (saved sooner here than
    the service's interval, to keep the test short)."""
    monkeypatch.setattr(webhooks, "IDLE_CURSOR_SAVE_INTERVAL_SECONDS", 0.5)
    with receiving() as everything, receiving() as alerts:
        every, low = webhook_endpoints.load(
            _endpoints_file(
                tmp_path,
                ("everything", everything.url, None),
                ("alerts", alerts.url, ["BALANCE_LOW"]),
            )
        )
        assert (every.types, low.types) == (None, frozenset({EventType.BALANCE_LOW}))
        assert every.lock_key != low.lock_key
        async with (
            delivering(credits_server, database_url, every.url, admin_engine, endpoint=every),
            delivering(credits_server, database_url, low.url, admin_engine, endpoint=low),
        ):
            account = new_id()
            await _grant(ops, account, 100)
            await ops.UpdateAccountSettings(
                pb.UpdateAccountSettingsRequest(
                    account_id=account,
                    settings=pb.AccountSettings(
                        balance_alert_thresholds=pb.BalanceAlertThresholds(thresholds=[50])
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["balance_alert_thresholds"]),
                ),
                timeout=T,
            )
            await ops.Reserve(
                pb.ReserveRequest(account_id=account, amount=60, idempotency_key=new_id("hold")),
                timeout=T,
            )
            await _grant(ops, account, 1)
            every_type = await _arrived(everything, account, 5)
            (alert,) = await _arrived(alerts, account, 1)
            # Past the idle save's interval: the filtered endpoint's cursor has moved on.
            await asyncio.sleep(webhooks.IDLE_CURSOR_SAVE_INTERVAL_SECONDS * 3)
            stored = await _stored_cursor(admin_engine, low.url)
    assert [e["type"] for e in every_type] == [
        "GRANTED",
        "ACCOUNT_SETTINGS_CHANGED",
        "RESERVED",
        "BALANCE_LOW",
        "GRANTED",
    ]
    assert alert == every_type[3]
    assert alerts.events_of(account) == [alert]
    position, seq = (int(part) for part in every_type[-1]["cursor"].split("-"))
    assert stored >= (position, seq)
    for receiver, name in ((everything, "everything"), (alerts, "alerts")):
        for headers, body in receiver.received:
            signed = headers[webhooks.SIGNATURE_HEADER]
            assert verify_webhook(body, signed, f"secret-{name}".encode())


async def test_an_endpoint_that_is_down_holds_back_only_itself(
    ops: Stub,
    credits_server: RunningServer,
    database_url: str,
    admin_engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    with receiving(failures=1_000_000) as down, receiving() as up:
        failing, working = webhook_endpoints.load(
            _endpoints_file(tmp_path, ("down", down.url, None), ("up", up.url, None))
        )
        async with (
            delivering(credits_server, database_url, down.url, admin_engine, endpoint=failing),
            delivering(credits_server, database_url, up.url, admin_engine, endpoint=working),
        ):
            account = new_id()
            granted = [await _grant(ops, account, amount) for amount in (1, 2)]
            events = await _arrived(up, account, 2)
    assert [e["grant_id"] for e in events] == granted
    assert down.events_of(account) == []
