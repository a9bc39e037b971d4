"""Events as a user of `make run` meets them (issue 18's "done when"): a grpcurl
WatchEvents stream started before a Grant, a Reserve and a Confirm receives those three,
in order, with matching ids; a Reserve that takes available below a threshold gives one
BALANCE_LOW and its Release one BALANCE_RECOVERED; after kill -9 of everything and
`make run` again, resuming from the last cursor received gives exactly the events
committed since, none twice; and a local receiver (CREDITS_WEBHOOK_URL) gets every
event signed, verifiable with the secret `make run` wrote to the dev folder."""

import contextlib
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from credits_client import verify_webhook
from service.settings import DEV_WEBHOOK_SECRET_FILE_NAME
from service.webhooks import SIGNATURE_HEADER
from tests.e2e.runner import GRPCURL, SERVICE, DevRun

ACCOUNT = "acct_demo_events"
THRESHOLD = 100
ARRIVAL_SECONDS_MAX = 60.0
POLL_SECONDS = 0.2


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.received: list[tuple[bytes, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"

    def hooks(self) -> list[tuple[bytes, str]]:
        with self.lock:
            return list(self.received)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.received.append((body, self.headers[SIGNATURE_HEADER]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


class Watch:
    """`grpcurl … WatchEvents` in a process of its own, its JSON messages parsed as they
    come."""

    def __init__(self, devrun: DevRun, request: dict[str, object]) -> None:
        pki = devrun.dev_dir / "pki"
        self._process = subprocess.Popen(
            [
                GRPCURL,
                *("-cacert", str(pki / "ca.pem")),
                *("-cert", str(pki / "ops.pem"), "-key", str(pki / "ops.key")),
                *("-d", json.dumps(request)),
                devrun.address,
                f"{SERVICE}/WatchEvents",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        decoder, text = json.JSONDecoder(), ""
        for line in self._process.stdout:
            text += line
            with contextlib.suppress(json.JSONDecodeError):
                message, end = decoder.raw_decode(text.strip())
                text = text.strip()[end:]
                with self._lock:
                    self._events.append(message["event"])

    def events(self, count: int) -> list[dict[str, Any]]:
        """The first `count` events, once they have arrived."""
        deadline = time.monotonic() + ARRIVAL_SECONDS_MAX
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._events) >= count:
                    return list(self._events)
            time.sleep(POLL_SECONDS)
        with self._lock:
            raise AssertionError(f"{count} events expected, {len(self._events)} arrived")

    def stop(self) -> None:
        self._process.kill()
        self._process.wait()


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("EVENT_TYPE_") for e in events]


def test_events_and_webhooks_against_make_run(devrun: DevRun) -> None:
    with receiving() as receiver:
        devrun.env["CREDITS_WEBHOOK_URL"] = receiver.url
        devrun.start()
        # From the account's first event on: a new account has none yet, so the stream
        # waits for the Grant however long it takes to open.
        watch = Watch(devrun, {"from_oldest": True, "account_id": ACCOUNT})
        try:
            granted = devrun.call(
                "Grant",
                {
                    "account_id": ACCOUNT,
                    "amount": 1000,
                    "source": "GRANT_SOURCE_PURCHASE",
                    "idempotency_key": "events-grant-1",
                },
            )
            devrun.call(
                "UpdateAccountSettings",
                {
                    "account_id": ACCOUNT,
                    "settings": {"balance_alert_thresholds": {"thresholds": [THRESHOLD]}},
                    "update_mask": {"paths": ["balance_alert_thresholds"]},
                },
            )
            reserved = devrun.call(
                "Reserve", {"account_id": ACCOUNT, "amount": 300, "idempotency_key": "events-r-1"}
            )
            reservation = reserved["reservation"]
            assert isinstance(reservation, dict)
            devrun.call(
                "Confirm",
                {
                    "account_id": ACCOUNT,
                    "reservation_id": reservation["reservation_id"],
                    "amount": 200,
                },
            )
            first = watch.events(4)
        finally:
            watch.stop()
        assert _types(first) == ["GRANTED", "ACCOUNT_SETTINGS_CHANGED", "RESERVED", "CONFIRMED"]
        grant = granted["grant"]
        assert isinstance(grant, dict)
        assert first[0]["grant_id"] == grant["grant_id"]
        assert first[2]["reservation_id"] == first[3]["reservation_id"]
        assert first[2]["reservation_id"] == reservation["reservation_id"]
        last_cursor = first[-1]["cursor"]

        # Available 800: a hold of 750 leaves 50, below the threshold; its release, 800.
        low = devrun.call(
            "Reserve", {"account_id": ACCOUNT, "amount": 750, "idempotency_key": "events-r-2"}
        )
        held = low["reservation"]
        assert isinstance(held, dict)
        devrun.call("Release", {"account_id": ACCOUNT, "reservation_id": held["reservation_id"]})

        devrun.kill_everything()
        devrun.start()
        watch = Watch(devrun, {"after_cursor": last_cursor, "account_id": ACCOUNT})
        try:
            since = watch.events(4)
            time.sleep(1)  # nothing else may follow: none twice, none from before
            assert watch.events(4) == since
        finally:
            watch.stop()
        assert _types(since) == ["RESERVED", "BALANCE_LOW", "RELEASED", "BALANCE_RECOVERED"]
        assert since[1]["threshold"] == since[3]["threshold"] == str(THRESHOLD)
        assert {e["reservation_id"] for e in (since[0], since[2])} == {held["reservation_id"]}

        secret = (devrun.dev_dir / DEV_WEBHOOK_SECRET_FILE_NAME).read_text().strip()
        expected = {e["event_id"] for e in [*first, *since]}
        deadline = time.monotonic() + ARRIVAL_SECONDS_MAX
        while time.monotonic() < deadline:
            hooks = [verify_webhook(body, header, secret) for body, header in receiver.hooks()]
            if expected <= {hook["event_id"] for hook in hooks}:
                break
            time.sleep(POLL_SECONDS)
        delivered = [h for h in hooks if h["account_id"] == ACCOUNT]
        assert expected <= {hook["event_id"] for hook in delivered}
        by_id = {hook["event_id"]: hook for hook in delivered}
        assert [by_id[e["event_id"]]["type"] for e in [*first, *since]] == _types([*first, *since])
