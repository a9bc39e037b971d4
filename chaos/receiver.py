"""The endpoint of the service's own webhooks during a chaos run: an HTTP server on a
thread of the chaos process that acknowledges every POST and keeps it as received
(signature header, raw body and when it arrived), for checks.check_webhooks."""

import datetime
import http.server
import threading
from typing import NamedTuple

# The secret the run's instances sign their webhooks with.
SERVICE_WEBHOOK_SECRET = "chaos-service-webhook-secret"  # noqa: S105 (a throwaway test secret)
# A second endpoint, of CREDITS_WEBHOOK_ENDPOINTS_FILE, that gets only some types: its
# name, its own secret, and types the workload makes plenty of.
FILTERED_ENDPOINT_NAME = "chaos-filtered"
FILTERED_WEBHOOK_SECRET = "chaos-filtered-webhook-secret"  # noqa: S105 (a throwaway test secret)
FILTERED_WEBHOOK_TYPES = frozenset({"GRANTED", "REVOKED", "TRANSFER_SENT"})
SIGNATURE_HEADER = "Credits-Signature"


class Received(NamedTuple):
    signature: str
    body: bytes
    arrived_at: datetime.datetime


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "WebhookReceiver"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if len(body) < length:
            # The sender died between the headers and the end of the body (the instance
            # delivering was killed): no request, and nobody to answer. It is sent again.
            with self.server.lock:
                self.server.incomplete += 1
            self.close_connection = True
            return
        with self.server.lock:
            self.server.received.append(
                Received(
                    self.headers.get(SIGNATURE_HEADER, ""),
                    body,
                    datetime.datetime.now(datetime.UTC),
                )
            )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class WebhookReceiver(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        # In the order received.
        self.received: list[Received] = []
        # Requests whose body never came whole.
        self.incomplete = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/credits-events"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # shutdown() waits for serve_forever, which never ran if the start failed first.
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)
