"""A stand-in for Stripe's API on an ephemeral loopback port: a real HTTP server
(`http.server`, in a thread) that answers `GET /v1/charges/<id>` with the charge it was
given, in Stripe's JSON, to callers with the right API key. The gateway reaches it
through the `stripe` library exactly as it reaches Stripe (CREDITS_GATEWAY_STRIPE_API_BASE)."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_KEY = "rk_test_gateway_charges_read_0123456789"
CHARGES_PATH = "/v1/charges/"


@dataclass
class StripeStub:
    url: str = ""
    charges: dict[str, dict[str, object]] = field(default_factory=dict)
    # (path, Authorization header) of every request, in order.
    requests: list[tuple[str, str]] = field(default_factory=list)


def _handler(stub: StripeStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization", "")
            stub.requests.append((self.path, authorization))
            charge_id = self.path.removeprefix(CHARGES_PATH)
            if authorization != f"Bearer {API_KEY}":
                self._answer(401, {"error": {"type": "invalid_request_error"}})
            elif not self.path.startswith(CHARGES_PATH) or charge_id not in stub.charges:
                self._answer(404, {"error": {"type": "invalid_request_error"}})
            else:
                self._answer(200, stub.charges[charge_id])

        def _answer(self, status: int, document: dict[str, object]) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Request-Id", "req_stub")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the tests read `requests` instead."""

    return Handler


@contextmanager
def stripe_stub() -> Iterator[StripeStub]:
    stub = StripeStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
