"""Stripe-Signature verification over the raw body, with several secrets at once.

During a rotation Stripe signs each delivery with every active secret of the endpoint
(one `v1=` per secret), and the gateway holds the old and the new secret: a delivery is
authentic if any held secret verifies it.
"""

from collections.abc import Sequence

import stripe

# Stripe's own default: a signature older than this is refused (a replayed delivery).
STRIPE_SIGNATURE_TOLERANCE_SECONDS = 300
# A real header is t=…,v1=… per secret: well under this.
SIGNATURE_HEADER_CHARS_MAX = 4096


def verify(payload: str, header: str | None, secrets: Sequence[str]) -> bool:
    """True if `header` is a fresh Stripe signature of `payload` by one of `secrets`.
    `payload` is the body exactly as received, decoded from UTF-8 and nothing else."""
    # Stripe's headers are ASCII; any other byte (anyone can send one) would make the
    # constant-time comparison raise instead of fail.
    if not header or not header.isascii() or len(header) > SIGNATURE_HEADER_CHARS_MAX:
        return False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(
                payload, header, secret, STRIPE_SIGNATURE_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError:
            continue
        return True
    return False
