"""`make run` and `make reconcile`: the development environment in one command.

Creates what is missing under `.dev/` (PKI, the gateway's Stripe signing secret, the
callers file, the package table), starts the embedded PostgreSQL (or uses
`CREDITS_DATABASE_URL`), migrates it, and runs the service and the gateway in the
foreground until Ctrl-C. `CREDITS_…` variables from the environment pass through.
"""

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.packages import write_development_table
from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import admin, database
from service.settings import DEV_DIR

# How long the service and the gateway get to finish in-flight work after Ctrl-C.
CHILD_STOP_SECONDS = 15.0
CHILD_POLL_SECONDS = 0.2
WEBHOOK_SECRET_BYTES = 32


def ensure_dev_files(dev_dir: Path) -> None:
    ensure_dev_pki(dev_dir / "pki")
    ensure_dev_callers(dev_dir / "callers.toml")
    secret = dev_dir / "stripe-webhook-secret"
    if not secret.exists():
        secret.touch(mode=0o600)
        secret.write_text(f"whsec_{secrets.token_urlsafe(WEBHOOK_SECRET_BYTES)}\n")
    packages = dev_dir / "credit-packages.toml"
    if not packages.exists():
        write_development_table(packages)


def open_database(dev_dir: Path) -> tuple[str, database.Embedded | None]:
    """The service's URL, migrated; and the embedded server to keep alive, if used."""
    configured = os.environ.get("CREDITS_DATABASE_URL")
    if configured:
        database.migrate(os.environ.get("CREDITS_MIGRATION_DATABASE_URL", configured))
        return configured, None
    embedded = database.prepare_embedded(dev_dir)
    return embedded.service_url, embedded


def stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + CHILD_STOP_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


def run(dev_dir: Path) -> int:
    url, _embedded = open_database(dev_dir)
    env = {**os.environ, "CREDITS_ENV": "development", "CREDITS_DATABASE_URL": url}
    children = [
        subprocess.Popen([sys.executable, "-m", "service"], env=env),
        subprocess.Popen([sys.executable, "-m", "gateway"], env=env),
    ]
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(
        "credits service on 127.0.0.1:50051, gateway on 127.0.0.1:8080; Ctrl-C stops both",
        file=sys.stderr,
    )
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(CHILD_POLL_SECONDS)
    stop_all(children)
    failed = [c for c in children if c.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reconcile", action="store_true", help="reconcile the dev database")
    args = parser.parse_args()
    dev_dir = Path(os.environ.get("CREDITS_DEV_DIR", str(DEV_DIR)))
    if args.reconcile:
        url, _embedded = open_database(dev_dir)
        os.environ["CREDITS_DATABASE_URL"] = url
        sys.exit(admin.main(["reconcile"]))
    ensure_dev_files(dev_dir)
    sys.exit(run(dev_dir))


if __name__ == "__main__":
    main()
