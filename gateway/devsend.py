"""`python -m gateway.devsend FILE...`: deliver Stripe event files to a gateway, signed
the way Stripe signs them, and print each answer. A development tool: it replays the
fixture scenario against `make run`, signing with the development secret file.

    .venv/bin/python -m gateway.devsend tests/fixtures/stripe/checkout.session.completed.json
"""

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

import stripe

from gateway.settings import DEV_DIR, split_secrets

DEFAULT_URL = "http://127.0.0.1:8080/stripe/webhook"
REQUEST_TIMEOUT_SECONDS = 30.0


def deliver(url: str, body: bytes, secret: str) -> tuple[int, str]:
    """Post `body` exactly as given (signed over those bytes); the status and body."""
    header = stripe.WebhookSignature.generate_signature_header(body.decode("utf-8"), secret)
    request = urllib.request.Request(  # noqa: S310 (a URL the developer passes)
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="Stripe event JSON files")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument(
        "--secret-file",
        type=Path,
        default=DEV_DIR / "stripe-webhook-secret",
        help="the first secret in it signs (default: the development secret)",
    )
    args = parser.parse_args(argv)
    secrets = split_secrets(args.secret_file.read_text(encoding="utf-8"))
    if not secrets:
        parser.error("the secret file holds no secret")
    failed = False
    for path in args.files:
        status, answer = deliver(args.url, path.read_bytes(), secrets[0])
        print(f"{status} {path.name} {answer}")
        failed = failed or status >= 300
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
