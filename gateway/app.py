"""The HTTP surface: exactly `POST /stripe/webhook` and `GET /healthz`.

A webhook goes: size limit -> signature over the raw bytes -> JSON -> plan -> service ->
answer. Nothing reaches the service before the signature is verified, and no response
carries anything but a fixed small JSON body; the detail goes to one log line per
request, under the request id that the response's `X-Request-Id` also carries.
"""

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.events import Envelope, parse_envelope, plan
from gateway.fulfilment import Credits, Result, fulfil, needs_attention
from gateway.metrics import GatewayMetrics
from gateway.packages import PackageTable
from gateway.signatures import verify
from gateway.stripe_api import Charges

WEBHOOK_PATH = "/stripe/webhook"
HEALTH_PATH = "/healthz"
# Stripe's events are a few KiB; 1 MiB is the spec's limit, checked before any parsing.
WEBHOOK_BODY_BYTES_MAX = 1024 * 1024
HSTS_MAX_AGE_SECONDS = 2 * 365 * 24 * 3600
SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": f"max-age={HSTS_MAX_AGE_SECONDS}; includeSubDomains",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# The whole vocabulary of response bodies: nothing else is ever sent.
BODIES: Mapping[int, Mapping[str, object]] = {
    200: {"received": True},
    400: {"error": "bad request"},
    404: {"error": "not found"},
    405: {"error": "method not allowed"},
    413: {"error": "payload too large"},
    500: {"error": "internal error"},
    503: {"error": "temporarily unavailable, retry later"},
}

log = logging.getLogger("gateway.webhook")


@dataclass(frozen=True)
class Gateway:
    """What the webhook needs, passed in explicitly by the composition root."""

    secrets: tuple[str, ...] = field(repr=False)
    packages: PackageTable
    account_metadata_key: str
    credits: Credits
    metrics: GatewayMetrics
    # Stripe's API, to read the charge of a refund that failed; None without an API key.
    charges: Charges | None = None


def fixed_response(status_code: int, headers: Mapping[str, str] | None = None) -> Response:
    body = BODIES.get(status_code, BODIES[500] if status_code >= 500 else BODIES[400])
    return JSONResponse(dict(body), status_code=status_code, headers=headers)


class SecurityHeaders:
    """Sets the security headers on every response, whoever produced it: the handlers,
    Starlette's 404/405, or its last-resort 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def read_body(request: Request) -> bytes | None:
    """The raw body, or None when it exceeds the limit. The declared length is checked
    first (nothing is read then) and the streamed bytes are counted too, because a
    chunked body declares nothing."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > WEBHOOK_BODY_BYTES_MAX:
        return None
    chunks, size_bytes = [], 0
    async for chunk in request.stream():
        size_bytes += len(chunk)
        if size_bytes > WEBHOOK_BODY_BYTES_MAX:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def parse_event(payload: str) -> Envelope | None:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, or absurdly nested
        return None
    return parse_envelope(document)


@dataclass
class Delivery:
    """What one webhook request learned, for its log line and metrics."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    event_id: str = ""
    event_type: str = ""
    refs: Mapping[str, str] = field(default_factory=dict)


async def handle(request: Request, gateway: Gateway, delivery: Delivery) -> Result:
    try:
        body = await read_body(request)
    except ClientDisconnect:
        return Result(400, "client_disconnected")
    if body is None:
        return Result(413, "too_large")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        return Result(400, "bad_signature")  # Stripe signs UTF-8 text; this is not it
    if not verify(payload, request.headers.get("stripe-signature"), gateway.secrets):
        return Result(400, "bad_signature")
    envelope = parse_event(payload)
    if envelope is None:
        return Result(400, "malformed_event")
    delivery.event_id, delivery.event_type = envelope.event_id, envelope.event_type
    planned = plan(envelope, gateway.packages, gateway.account_metadata_key)
    delivery.refs = planned.refs
    return await fulfil(planned, gateway.credits, gateway.charges, gateway.packages)


def _log(delivery: Delivery, result: Result, elapsed_seconds: float) -> None:
    fields = {
        "request_id": delivery.request_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "outcome": result.outcome,
        "status": result.status_code,
        "duration_ms": round(elapsed_seconds * 1000, 1),
        **{f"stripe_{name}": value for name, value in delivery.refs.items()},
        **result.fields,
    }
    if result.status_code >= 500 or needs_attention(result.outcome):
        level = logging.ERROR
    elif result.status_code >= 400:
        level = logging.WARNING
    else:
        level = logging.INFO
    log.log(level, "webhook", extra=fields)


def create_app(gateway: Gateway) -> ASGIApp:
    async def webhook(request: Request) -> Response:
        started, delivery = time.monotonic(), Delivery()
        try:
            result = await handle(request, gateway, delivery)
        except Exception:  # a bug: answer a fixed 500 (Stripe retries), detail to the log
            log.exception("webhook failed", extra={"request_id": delivery.request_id})
            result = Result(500, "internal_error")
        elapsed_seconds = time.monotonic() - started
        gateway.metrics.webhook(
            delivery.event_type, result.outcome, result.status_code, elapsed_seconds
        )
        _log(delivery, result, elapsed_seconds)
        return fixed_response(result.status_code, {"X-Request-Id": delivery.request_id})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        status_code = exc.status_code if isinstance(exc, HTTPException) else 500
        headers = exc.headers if isinstance(exc, HTTPException) else None
        return fixed_response(status_code, headers)

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        return fixed_response(500)

    app = Starlette(
        routes=[
            Route(WEBHOOK_PATH, webhook, methods=["POST"]),
            # GET implies HEAD (RFC 9110); Starlette answers both.
            Route(HEALTH_PATH, healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
    )
    # "/healthz/" is another path (404), not a redirect to this one.
    app.router.redirect_slashes = False
    return SecurityHeaders(app)
