"""`make run`, `make reload` and `make reconcile`: the development environment in one
command.

Creates what is missing under `.dev/` (PKI, the gateway's Stripe signing secret, the
callers file, the package table, the price list `prices.toml`), starts the embedded
PostgreSQL (or uses `CREDITS_DATABASE_URL`), migrates it, seeds the job types of
`.dev/prices.toml` that have never had a price (a start after the first changes nothing,
and a price set with SetPrice stays; `python -m service.admin prices load` sets a file's
prices that differ), starts a Redis of its
own for the rate limits (or uses `CREDITS_REDIS_URL`), and runs the service and the
gateway in the foreground until Ctrl-C, SIGTERM or SIGHUP, which stop them all.
`CREDITS_…` variables from the environment pass through; the gateway calls the service at
`CREDITS_GRPC_ADDR`.

The service runs one process per core, and processes count rate limits exactly only
together, in one Redis (service.settings refuses several without one). Without
redis-server on PATH the service runs one process, which counts them exactly alone.

The service names the process to signal in `.dev/service.pid` (CREDITS_PID_FILE), which
`make reload` sends SIGHUP: the service rereads its callers file and TLS files.

It starts after any stop, `kill -9` of every process included: what a killed embedded
PostgreSQL leaves behind is cleared (service.store.database), and the service and the gateway
die with the runner.
"""

import argparse
import asyncio
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from gateway.packages import write_development_table
from gateway.settings import LISTEN_ADDR_DEFAULT
from scripts.devcallers import DEV_RPCS, ensure_dev_callers
from scripts.devpki import ensure_dev_pki, issue_caller
from service import admin
from service.access.callers import load_callers
from service.ops import pidfile
from service.settings import DEV_DIR, DEV_GRPC_ADDR, DEV_WEBHOOK_SECRET_FILE_NAME
from service.store import database

# How long the service and the gateway get to finish in-flight work after Ctrl-C.
CHILD_STOP_SECONDS = 15.0
CHILD_POLL_SECONDS = 0.2
WEBHOOK_SECRET_BYTES = 32
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Linux's prctl(PR_SET_PDEATHSIG): the kernel signals the child when the runner dies,
# however it dies.
PR_SET_PDEATHSIG = 1
DEV_PID_FILE_NAME = "service.pid"
# A redis-server that has not answered a PING by then is not going to.
REDIS_START_SECONDS = 10.0
REDIS_PASSWORD_BYTES = 32
# A Redis that only counts rate limits: nothing is kept on disk.
REDIS_CONFIG = 'bind 127.0.0.1\nport {port}\nrequirepass {password}\nsave ""\nappendonly no\n'
# A listen address on every interface is dialled on loopback.
ANY_HOSTS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}  # noqa: S104


# The development price list: what the README's tour reserves by quantity.
DEV_PRICES_TOML = """\
# Development prices, written by scripts/devrun.py; `make run` sets what is not in effect.
reason = "development price list"

[prices.story]
unit_price = 25
unit = "story"

[prices.book_page]
unit_price = 12
unit = "page"

[prices.image]
unit_price = 500
unit = "image"

[prices.tokens_1k]
unit_price = 3
unit = "1k tokens"
"""


def dev_prices_file(dev_dir: Path) -> Path:
    return dev_dir / "prices.toml"


def ensure_dev_files(dev_dir: Path) -> None:
    ensure_dev_pki(dev_dir / "pki")
    ensure_dev_callers(dev_dir / "callers.toml")
    # A development caller added since this .dev/ was made (`events`) gets its
    # certificate, API key and permissions now.
    known = load_callers(dev_dir / "callers.toml").by_name
    for name, rpcs in DEV_RPCS.items():
        if name not in known:
            issue_caller(dev_dir, name, list(rpcs))
    secret = dev_dir / "stripe-webhook-secret"
    if not secret.exists():
        secret.touch(mode=0o600)
        secret.write_text(f"whsec_{secrets.token_urlsafe(WEBHOOK_SECRET_BYTES)}\n")
    # Signs the service's own webhooks (CREDITS_WEBHOOK_URL): only the service reads it.
    own = dev_dir / DEV_WEBHOOK_SECRET_FILE_NAME
    if not own.exists():
        own.touch(mode=0o600)
        own.write_text(secrets.token_urlsafe(WEBHOOK_SECRET_BYTES) + "\n")
    packages = dev_dir / "credit-packages.toml"
    if not packages.exists():
        write_development_table(packages)
    prices = dev_prices_file(dev_dir)
    if not prices.exists():
        prices.write_text(DEV_PRICES_TOML)


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
            child.wait()


def _die_with_runner() -> None:
    """In the child before exec: SIGTERM when the runner dies, even by kill -9, so no
    child outlives it holding its port."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_child(module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A process group of its own: Ctrl-C reaches the runner alone, which stops each child
    # once, gracefully, and in order. The runner has no threads, so preexec_fn is safe.
    return subprocess.Popen(  # noqa: S603 (our own modules, with this interpreter)
        [sys.executable, "-m", module],
        env=env,
        process_group=0,
        preexec_fn=_die_with_runner,  # noqa: PLW1509
    )


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start_redis(executable: str) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free loopback port with a password of this run, and its URL.
    The configuration goes in on stdin, so that no command line shows the password."""
    port = free_loopback_port()
    password = secrets.token_urlsafe(REDIS_PASSWORD_BYTES)
    process = subprocess.Popen(  # noqa: S603 (redis-server from PATH, our configuration)
        [executable, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=_die_with_runner,  # noqa: PLW1509
    )
    assert process.stdin is not None
    process.stdin.write(REDIS_CONFIG.format(port=port, password=password).encode())
    process.stdin.close()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + REDIS_START_SECONDS
    try:
        while not _answers(client):
            if process.poll() is not None or time.monotonic() > deadline:
                stop_all([process])
                raise RuntimeError("redis-server did not start")
            time.sleep(CHILD_POLL_SECONDS)
    finally:
        client.close()
    return process, url


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def dialable(listen_addr: str) -> str:
    """The address to call a server listening on `listen_addr` at."""
    host, _, port = listen_addr.rpartition(":")
    return f"{ANY_HOSTS.get(host, host)}:{port}"


class StopRequest:
    """Set by Ctrl-C, SIGTERM or SIGHUP at any moment from start-up on; start-up steps
    finish (the embedded database must not be left half-started) and then everything
    stops."""

    def __init__(self) -> None:
        self.requested = False
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._request)

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True


def pid_file(dev_dir: Path) -> Path:
    """Where the service of `make run` names itself."""
    return Path(os.environ.get("CREDITS_PID_FILE") or dev_dir / DEV_PID_FILE_NAME)


def reload(dev_dir: Path) -> int:
    """SIGHUP to the service of `make run`, through its pid file."""
    try:
        pid = pidfile.signal_service(pid_file(dev_dir), signal.SIGHUP)
    except pidfile.PidFileError as exc:
        print(f"reload: {exc} (is `make run` running?)", file=sys.stderr)
        return 1
    print(
        f"reload: sent SIGHUP to the service (pid {pid}); its log says `reloaded` or"
        " `reload refused` for each file",
        file=sys.stderr,
    )
    return 0


def run(dev_dir: Path) -> int:
    stop = StopRequest()
    url, embedded = open_database(dev_dir)
    try:
        entries = admin.read_prices_file(dev_prices_file(dev_dir))
        # A seed: a price someone set since (SetPrice) is kept.
        for price in asyncio.run(admin.load_prices(url, entries, only_unpriced=True)):
            print(
                f"price set: {price.job_type} {price.unit_price} per {price.unit}", file=sys.stderr
            )
        return serve(url, stop, pid_file(dev_dir))
    finally:
        if embedded is not None:
            # Stops the server unless another process (an admin command) still uses it.
            embedded.server.cleanup()


def serve(url: str, stop: StopRequest, service_pid_file: Path) -> int:
    service_addr = os.environ.get("CREDITS_GRPC_ADDR") or DEV_GRPC_ADDR
    gateway_addr = os.environ.get("CREDITS_GATEWAY_ADDR") or LISTEN_ADDR_DEFAULT
    target = os.environ.get("CREDITS_GATEWAY_SERVICE_TARGET") or dialable(service_addr)
    env = {
        **os.environ,
        "CREDITS_ENV": "development",
        "CREDITS_DATABASE_URL": url,
        "CREDITS_GATEWAY_SERVICE_TARGET": target,
        "CREDITS_PID_FILE": str(service_pid_file),
    }
    children: list[subprocess.Popen[bytes]] = []
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        if stop.requested:
            return 0
        redis_server = shutil.which("redis-server")
        if not env.get("CREDITS_REDIS_URL") and redis_server is not None:
            redis_process, env["CREDITS_REDIS_URL"] = start_redis(redis_server)
            helpers.append(redis_process)
        elif not env.get("CREDITS_REDIS_URL"):
            print(
                "no redis-server on PATH: the service runs one process"
                " (scripts/ensure-redis-server.sh installs it)",
                file=sys.stderr,
            )
        children = [start_child("service", env), start_child("gateway", env)]
        print(
            f"credits service on {service_addr}, gateway on {gateway_addr} calling it at"
            f" {target}; Ctrl-C stops both",
            file=sys.stderr,
        )
        while not stop.requested and all(
            process.poll() is None for process in [*children, *helpers]
        ):
            time.sleep(CHILD_POLL_SECONDS)
    finally:
        stop_all(children)
        # After the service, whose calls it counts until the last one.
        stop_all(helpers)
    failed = [c for c in [*children, *helpers] if c.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stop.requested else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--reconcile", action="store_true", help="reconcile the dev database")
    action.add_argument("--reload", action="store_true", help="SIGHUP the running service")
    args = parser.parse_args()
    dev_dir = Path(os.environ.get("CREDITS_DEV_DIR", str(DEV_DIR)))
    if args.reload:
        sys.exit(reload(dev_dir))
    if args.reconcile:
        url, _embedded = open_database(dev_dir)
        os.environ["CREDITS_DATABASE_URL"] = url
        sys.exit(admin.main(["reconcile"]))
    ensure_dev_files(dev_dir)
    sys.exit(run(dev_dir))


if __name__ == "__main__":
    main()
