"""`python -m gateway.devsend`: a test purchase, refund or dispute in one command against
`make run`, signed the way Stripe signs (with the development secret file), or Stripe
event files delivered as they are.

    .venv/bin/python -m gateway.devsend --account acct_42 --package credits_1000
    .venv/bin/python -m gateway.devsend --account acct_42 --package credits_1000 --refund 400
    .venv/bin/python -m gateway.devsend --account acct_42 --package credits_1000 --dispute lost
    .venv/bin/python -m gateway.devsend tests/fixtures/stripe/checkout.session.completed.json

The purchase's Stripe ids derive from the account, the package and `--order`, so a
later `--refund` or `--dispute` with the same three finds the same payment.
"""

import argparse
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import stripe

from gateway.events import (
    DISPUTE_CLOSED_EVENT,
    DISPUTE_CREATED_EVENT,
    PURCHASE_MARK_KEY,
    REFUND_EVENT,
)
from gateway.packages import Package, PackageTableError, load_table
from gateway.settings import DEV_DIR, split_secrets

DEFAULT_URL = "http://127.0.0.1:8080/stripe/webhook"
REQUEST_TIMEOUT_SECONDS = 30.0
# The API version of the fixture events the gateway is tested with.
API_VERSION = "2026-07-29.dahlia"
DISPUTE_STATUSES = {"created": "needs_response", "lost": "lost", "won": "won"}
ID_TOKEN_CHARS = 24


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


class DevPurchase:
    """One test purchase's Stripe ids and the events about it, shaped like Stripe's."""

    def __init__(self, account: str, package: Package, order: str = "1") -> None:
        seed = f"{account}\n{package.name}\n{order}".encode()
        token = hashlib.sha256(seed).hexdigest()[:ID_TOKEN_CHARS]
        self.account, self.package = account, package
        self.session_id, self.payment_intent = f"cs_test_dev{token}", f"pi_dev{token}"
        self.charge_id, self.dispute_id = f"ch_dev{token}", f"dp_dev{token}"

    def _event(self, event_type: str, data_object: dict[str, object]) -> bytes:
        event = {
            "id": f"evt_dev{uuid.uuid4().hex}",
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "livemode": False,
            "type": event_type,
            "data": {"object": data_object},
        }
        return json.dumps(event, indent=2).encode()

    def purchase(self) -> bytes:
        return self._event(
            "checkout.session.completed",
            {
                "id": self.session_id,
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "status": "complete",
                "client_reference_id": self.account,
                "payment_intent": self.payment_intent,
                "amount_total": self.package.price_minor_units,
                "currency": self.package.currency,
                "metadata": {PURCHASE_MARK_KEY: self.package.name},
            },
        )

    def refund(self, amount_refunded: int) -> bytes:
        """`amount_refunded`: the charge's running total refunded, in minor units."""
        price = self.package.price_minor_units
        return self._event(
            REFUND_EVENT,
            {
                "id": self.charge_id,
                "object": "charge",
                "payment_intent": self.payment_intent,
                "amount": price,
                "amount_refunded": amount_refunded,
                "refunded": amount_refunded >= price,
                "currency": self.package.currency,
                "metadata": {PURCHASE_MARK_KEY: self.package.name},
            },
        )

    def dispute(self, stage: str) -> bytes:
        """`stage`: created, lost or won; the whole price is disputed."""
        event_type = DISPUTE_CREATED_EVENT if stage == "created" else DISPUTE_CLOSED_EVENT
        return self._event(
            event_type,
            {
                "id": self.dispute_id,
                "object": "dispute",
                "charge": self.charge_id,
                "payment_intent": self.payment_intent,
                "amount": self.package.price_minor_units,
                "currency": self.package.currency,
                "status": DISPUTE_STATUSES[stage],
                "reason": "fraudulent",
            },
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="Stripe event JSON files")
    parser.add_argument("--account", help="make a test purchase for this account")
    parser.add_argument("--package", help="the package bought (price from the package table)")
    parser.add_argument("--order", default="1", help="tells two purchases of one package apart")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--refund",
        metavar="AMOUNT",
        help="refund the purchase: the charge's running total refunded in minor units, or 'full'",
    )
    action.add_argument("--dispute", choices=sorted(DISPUTE_STATUSES), help="dispute it")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument(
        "--secret-file",
        type=Path,
        default=DEV_DIR / "stripe-webhook-secret",
        help="the first secret in it signs (default: the development secret)",
    )
    parser.add_argument(
        "--packages-file",
        type=Path,
        default=DEV_DIR / "credit-packages.toml",
        help="the gateway's package table (default: the development one)",
    )
    return parser


def build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, bytes]]:
    """The bodies to send, each with a name to print."""
    if not args.account:
        if args.package or args.refund or args.dispute or not args.files:
            parser.error("give event files, or --account and --package")
        return [(path.name, path.read_bytes()) for path in args.files]
    if args.files or not args.package:
        parser.error("--account needs --package, and no event files")
    try:
        package = load_table(args.packages_file).named(args.package)
    except (OSError, PackageTableError) as error:
        parser.error(f"cannot read the package table {args.packages_file}: {error}")
    if package is None:
        parser.error(f"no package {args.package!r} in {args.packages_file}")
    purchase = DevPurchase(args.account, package, args.order)
    if args.dispute:
        return [(f"dispute {args.dispute}", purchase.dispute(args.dispute))]
    if args.refund:
        if args.refund == "full":
            amount = package.price_minor_units
        elif args.refund.isdigit() and 0 < int(args.refund) <= package.price_minor_units:
            amount = int(args.refund)
        else:
            parser.error(f"--refund takes 'full' or 1..{package.price_minor_units}")
        return [(f"refund {amount}", purchase.refund(amount))]
    return [(f"purchase {package.name}", purchase.purchase())]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    bodies = build(args, parser)
    secrets = split_secrets(args.secret_file.read_text(encoding="utf-8"))
    if not secrets:
        parser.error("the secret file holds no secret")
    failed = False
    for name, body in bodies:
        status, answer = deliver(args.url, body, secrets[0])
        print(f"{status} {name} {answer}")
        failed = failed or status >= 300
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
