"""A webhook endpoint for the benchmark: records when each event's first POST arrived
(by its Credits-Event-Id), answers 204, and runs in a thread of the bench's own process
while the service delivers to it (CREDITS_WEBHOOK_URL)."""

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

from service.webhooks import EVENT_ID_HEADER


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._arrivals: dict[str, float] = {}
        self.posts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/bench-hooks"

    def arrived(self, event_id: str) -> float | None:
        """The time.perf_counter() of the event's first arrival, or None yet."""
        with self._lock:
            return self._arrivals.get(event_id)

    def record(self, event_id: str) -> None:
        now = time.perf_counter()
        with self._lock:
            self.posts += 1
            self._arrivals.setdefault(event_id, now)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver
    # Keep-alive: the service POSTs event after event on the same connections.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.record(self.headers.get(EVENT_ID_HEADER, ""))
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
