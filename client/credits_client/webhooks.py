"""Checking the credits service's webhooks: `verify_webhook` proves a POST came from the
service (HMAC-SHA256 with the shared secret) and is recent, and returns its event."""

import hashlib
import hmac
import json
import time
from typing import Any

SIGNATURE_HEADER = "Credits-Signature"
# How old a signature may be by default: a replayed old request is refused.
TOLERANCE_SECONDS_DEFAULT = 300.0


class WebhookSignatureError(Exception):
    """The request is not a webhook of the service signed with this secret, or it is
    older than the tolerance. Its message never contains the body or the secret."""


def verify_webhook(
    body: bytes,
    header: str,
    secret: str | bytes,
    tolerance_seconds: float = TOLERANCE_SECONDS_DEFAULT,
) -> dict[str, Any]:
    """The event of a webhook POST, after checking its Credits-Signature `header`
    against the raw `body` exactly as received; raises WebhookSignatureError. A header
    may carry several v1 signatures (a secret being rotated): any one that matches
    counts. Events can arrive twice: de-duplicate on `event_id`."""
    key = secret.encode() if isinstance(secret, str) else secret
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookSignatureError("the signature header has no timestamp or no v1 signature")
    if abs(time.time() - timestamp) > tolerance_seconds:
        raise WebhookSignatureError("the signature's timestamp is outside the tolerance")
    expected = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookSignatureError("no signature matches the body and the secret")
    event: dict[str, Any] = json.loads(body)
    return event
