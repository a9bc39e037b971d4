"""`make bench` (`python -m bench`): the service end to end beside the floors that bound it.

In one run, on a database and service of its own (a temporary dev folder, ephemeral
ports; never `.dev/` or the ports of `make run`):

- the service as `make run` starts it (`python -m service` in development mode: mTLS,
  authentication, authorization, the rate limiter active with permissive limits,
  PostgreSQL): Reserve+Confirm cycles from a load generator in its own process, with
  `--clients` clients over `--accounts` accounts, on one hot account, and with
  `--light-clients` clients;
- floor (a), the transport: the same load against a bare grpc.aio server answering the
  same contract over the same mTLS from memory (bench.floor);
- floor (b), the database: the same two SQL functions driven by pgbench (bench.pgfloor),
  over the accounts and on the hot one;
- the memory of all service processes under load and the service's CPU time per cycle;
- events: the outbox's cost is the cycle throughput with it against the same load with
  `credits_emit` made a no-op, rounds alternating; then a service that delivers its
  webhooks to a receiver of the bench's own (bench.receiver) runs the 64-client load
  again, and balance alerts are timed from the crossing's commit to their arrival on a
  WatchEvents stream and at that receiver, on the idle service and under that load
  (bench.alerts).
"""

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench import alerts, pgfloor, processes
from bench.receiver import receiving
from scripts import devrun
from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service.settings import DEV_WEBHOOK_SECRET_FILE_NAME
from service.store import database

REPO = Path(__file__).resolve().parent.parent
ACCOUNT_PREFIX = "bench-"
HOT_PREFIX = "bench-hot-"
# Far above any rate a run reaches, so that the limiter counts but never refuses.
PERMISSIVE_RESERVE_RATE_PER_ACCOUNT = "1000000/second"
START_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 30.0
POLL_SECONDS = 0.2
MEMORY_SAMPLE_SECONDS = 0.5
# Targets this service is held to (docs/performance.md).
SHARE_OF_FLOOR_MIN = 0.5
LIGHT_P99_MS_MAX = 25.0
MEMORY_MB_MAX = 150.0
# A balance alert reaches a WatchEvents stream and a webhook receiver within this of the
# crossing's commit.
ALERT_P99_MS_MAX = 1000.0
# The outbox (events written in the ledger's transactions, and their delivery) costs at
# most this share of the cycle throughput.
OUTBOX_COST_MAX = 0.15
WEBHOOK_SECRET_BYTES = 32
# The outbox turned off for the cost's comparison: the one function every ledger change
# writes its event and decides its alerts through, as a no-op.
EMIT_FUNCTION = "credits_emit"
# Half of a process's CREDITS_EVENT_STREAMS_MAX: a few consumers waiting for rare events.
IDLE_STREAMS_DEFAULT = 16
MB = 1024 * 1024


@dataclass
class Result:
    name: str
    cycles_per_second: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    cpu_seconds_per_cycle: float | None = None
    database_cpu_seconds_per_cycle: float | None = None
    generator_cpu_seconds_per_cycle: float | None = None
    rss_mb: float | None = None
    pss_mb: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"a benchmarked server exited while starting:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(POLL_SECONDS)
    sys.exit(f"a benchmarked server did not start listening:\n{log.read_text()[-3000:]}")


def stop(process: "subprocess.Popen[bytes] | subprocess.Popen[str]") -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Sampler:
    """The largest memory of a process tree, sampled while the load runs."""

    def __init__(self, root: int) -> None:
        self._root = root
        self._done = threading.Event()
        self.peak = processes.Memory(0, 0)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(MEMORY_SAMPLE_SECONDS):
            now = processes.memory(processes.tree(self._root))
            if now.rss_bytes > self.peak.rss_bytes:
                self.peak = now

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def load(
    name: str,
    server: subprocess.Popen[bytes],
    target: str,
    pki: Path,
    args: argparse.Namespace,
    *,
    clients: int,
    accounts: int,
    prefix: str,
    database: int | None = None,
    beside: Callable[[], None] | None = None,
) -> Result:
    """Run the load generator in its own process against `target` (served by `server`,
    using the database whose postmaster is `database`); `beside` runs in a thread while
    the load is measured."""
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        f"--target={target}",
        f"--pki={pki}",
        f"--clients={clients}",
        f"--accounts={accounts}",
        f"--account-prefix={prefix}",
        f"--warmup-seconds={args.warmup_seconds}",
        f"--duration-seconds={args.duration_seconds}",
    ]
    generator = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert generator.stdout is not None
        first = json.loads(generator.stdout.readline() or "{}")
        if first.get("event") != "measuring":
            sys.exit(f"{name}: the load generator failed before measuring")
        trees = [server.pid] if database is None else [server.pid, database]
        cpu_before = [processes.cpu_seconds(processes.tree(pid)) for pid in trees]
        companion = None if beside is None else threading.Thread(target=beside, daemon=True)
        if companion is not None:
            companion.start()
        with Sampler(server.pid) as sampler:
            done = json.loads(generator.stdout.readline() or "{}")
            cpu_used = [
                processes.cpu_seconds(processes.tree(pid)) - before
                for pid, before in zip(trees, cpu_before, strict=True)
            ]
        if companion is not None:
            companion.join()
    finally:
        stop(generator)
    if done.get("event") != "done":
        sys.exit(f"{name}: the load generator failed while measuring")
    cycles = int(done["cycles"])
    return Result(
        name=name,
        cycles_per_second=cycles / float(done["seconds"]),
        p50_ms=done["p50_ms"],
        p99_ms=done["p99_ms"],
        errors=done["errors"],
        cpu_seconds_per_cycle=cpu_used[0] / cycles if cycles else None,
        database_cpu_seconds_per_cycle=cpu_used[1] / cycles if cycles and database else None,
        generator_cpu_seconds_per_cycle=float(done["cpu_seconds"]) / cycles if cycles else None,
        rss_mb=sampler.peak.rss_bytes / MB,
        pss_mb=sampler.peak.pss_bytes / MB,
    )


def service_env(
    dev: Path,
    address: str,
    url: str,
    *,
    redis_url: str,
    webhook_url: str | None,
    args: argparse.Namespace,
) -> dict[str, str]:
    env = {
        **os.environ,
        "CREDITS_ENV": "development",
        "CREDITS_DEV_DIR": str(dev),
        "CREDITS_DATABASE_URL": url,
        "CREDITS_GRPC_ADDR": address,
        "CREDITS_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "CREDITS_RESERVE_RATE_PER_ACCOUNT": PERMISSIVE_RESERVE_RATE_PER_ACCOUNT,
        # As under `make run`: the processes count rate limits together in a Redis of their
        # own (several processes are refused without one).
        "CREDITS_REDIS_URL": redis_url,
    }
    if webhook_url is not None:
        # Development mode signs webhooks with the dev folder's secret.
        secret = dev / DEV_WEBHOOK_SECRET_FILE_NAME
        secret.write_text(secrets.token_urlsafe(WEBHOOK_SECRET_BYTES))
        env["CREDITS_WEBHOOK_URL"] = webhook_url
    if args.processes is not None:
        env["CREDITS_PROCESSES"] = str(args.processes)
    return env


def postmaster(dev: Path) -> int:
    """The process id of the embedded PostgreSQL (the first line of postmaster.pid)."""
    return int((dev / "pgdata" / "postmaster.pid").read_text().split()[0])


@dataclass
class Events:
    """What the events part of the run found: alert latencies and the outbox's cost."""

    alerts_idle: dict[str, dict[str, float]] = field(default_factory=dict)
    alerts_loaded: dict[str, dict[str, float]] = field(default_factory=dict)
    with_outbox: list[float] = field(default_factory=list)
    without_outbox: list[float] = field(default_factory=list)
    webhook_posts: int = 0

    @property
    def outbox_cost(self) -> float:
        return 1 - statistics.median(self.with_outbox) / statistics.median(self.without_outbox)


async def _outbox(admin_url: str, enabled: bool, saved: dict[str, str]) -> None:
    """Turn the outbox off (credits_emit a no-op, its definition kept in `saved`) or on
    again (that definition restored), on the bench's own database."""
    if enabled and EMIT_FUNCTION not in saved:
        return  # never turned off
    conn = await asyncpg.connect(admin_url)
    try:
        if enabled:
            await conn.execute(saved.pop(EMIT_FUNCTION))
            return
        oid = f"'{EMIT_FUNCTION}'::regproc"
        saved[EMIT_FUNCTION] = await conn.fetchval(f"SELECT pg_get_functiondef({oid})")
        arguments = await conn.fetchval(f"SELECT pg_get_function_identity_arguments({oid})")
        await conn.execute(
            f"CREATE OR REPLACE FUNCTION {EMIT_FUNCTION}({arguments}) RETURNS void"
            " LANGUAGE plpgsql AS $$ BEGIN END $$"
        )
    finally:
        await conn.close()


@contextlib.contextmanager
def running_service(
    dev: Path,
    embedded: database.Embedded,
    args: argparse.Namespace,
    *,
    webhook_url: str | None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m service` as `make run` starts it, with its own Redis; the process and
    its address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = dev.parent / "service.log"
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("make bench needs redis-server: run scripts/ensure-redis-server.sh")
    redis_process, redis_url = devrun.start_redis(redis_server)
    env = service_env(
        dev,
        address,
        embedded.service_url,
        redis_url=redis_url,
        webhook_url=webhook_url,
        args=args,
    )
    with log.open("wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(service, port, log)
        yield service, address
    finally:
        stop(service)
        devrun.stop_all([redis_process])


def bench_service(
    dev: Path, embedded: database.Embedded, args: argparse.Namespace
) -> tuple[list[Result], Events]:
    """The cycle rows and the outbox's cost on a service without webhooks (so that the
    numbers compare with runs before events, and the bench's receiver takes no CPU from
    them); then, on one that delivers them to the bench's receiver, the alert latencies
    and the same load again."""
    pki = dev / "pki"
    events = Events()
    with running_service(dev, embedded, args, webhook_url=None) as (service, address):
        results = _service_rows(service, address, pki, args)
        saved: dict[str, str] = {}
        for _ in range(args.outbox_rounds):
            for enabled, rates in ((True, events.with_outbox), (False, events.without_outbox)):
                asyncio.run(_outbox(embedded.admin_url, enabled, saved))
                rates.append(
                    load(
                        f"outbox {'on' if enabled else 'off'}",
                        *(service, address, pki, args),
                        clients=args.clients,
                        accounts=args.accounts,
                        prefix=ACCOUNT_PREFIX,
                        database=postmaster(dev),
                    ).cycles_per_second
                )
        asyncio.run(_outbox(embedded.admin_url, True, saved))
    with (
        receiving() as receiver,
        running_service(dev, embedded, args, webhook_url=receiver.url) as (service, address),
    ):
        # On the idle service, before the load: a crossing's commit to its alert.
        events.alerts_idle = alerts.summaries(
            asyncio.run(alerts.measure(address, pki, args.alert_crossings, receiver))
        )

        def under_load() -> None:
            crossings = alerts.measure(
                address, pki, args.alert_crossings, receiver, seconds_max=args.duration_seconds
            )
            events.alerts_loaded = alerts.summaries(asyncio.run(crossings))

        results.append(
            load(
                f"service delivering webhooks, {args.clients} clients, {args.accounts} accounts",
                *(service, address, pki, args),
                clients=args.clients,
                accounts=args.accounts,
                prefix=ACCOUNT_PREFIX,
                database=postmaster(dev),
                beside=under_load,
            )
        )
        events.webhook_posts = receiver.posts
    return results, events


def _service_rows(
    service: subprocess.Popen[bytes], address: str, pki: Path, args: argparse.Namespace
) -> list[Result]:
    dev = pki.parent
    return [
        load(
            f"service, {args.clients} clients, {args.accounts} accounts",
            *(service, address, pki, args),
            clients=args.clients,
            accounts=args.accounts,
            prefix=ACCOUNT_PREFIX,
            database=postmaster(dev),
        ),
        load(
            f"service, {args.clients} clients, one hot account",
            *(service, address, pki, args),
            clients=args.clients,
            accounts=1,
            prefix=HOT_PREFIX,
            database=postmaster(dev),
        ),
        load(
            f"service, {args.light_clients} clients, {args.accounts} accounts",
            *(service, address, pki, args),
            clients=args.light_clients,
            accounts=args.accounts,
            prefix=ACCOUNT_PREFIX,
            database=postmaster(dev),
        ),
        load(
            f"service, {args.clients} clients, {args.accounts} accounts,"
            f" {args.idle_streams} idle WatchEvents streams",
            *(service, address, pki, args),
            clients=args.clients,
            accounts=args.accounts,
            prefix=ACCOUNT_PREFIX,
            database=postmaster(dev),
            beside=lambda: asyncio.run(
                alerts.idle_streams(address, pki, args.idle_streams, args.duration_seconds)
            ),
        ),
    ]


def bench_transport(dev: Path, args: argparse.Namespace) -> Result:
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = dev.parent / "floor.log"
    with log.open("wb") as out:
        floor = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", f"--address={address}", f"--pki={dev / 'pki'}"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(floor, port, log)
        return load(
            f"floor (a): bare grpc.aio from memory, {args.clients} clients",
            *(floor, address, dev / "pki", args),
            clients=args.clients,
            accounts=args.accounts,
            prefix=ACCOUNT_PREFIX,
        )
    finally:
        stop(floor)


def bench_database(url: str, args: argparse.Namespace) -> list[Result]:
    results = []
    for name, accounts, prefix in (
        (
            f"floor (b): pgbench, {args.clients} clients, {args.accounts} accounts",
            args.accounts,
            ACCOUNT_PREFIX,
        ),
        (f"floor (b): pgbench, {args.clients} clients, one hot account", 1, HOT_PREFIX),
    ):
        rate, failed = pgfloor.run(
            url,
            clients=args.clients,
            accounts=accounts,
            prefix=prefix,
            duration_seconds=args.duration_seconds,
        )
        results.append(Result(name, rate, errors={"failed": failed} if failed else {}))
    return results


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[Result]) -> str:
    lines = [
        "| what | cycles/s | p50 ms | p99 ms | errors | CPU ms/cycle: server"
        " / PostgreSQL / load generator | RSS MB (PSS) of the server |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cpu = " / ".join(
            "-" if v is None else f"{v * 1000:.2f}"
            for v in (
                r.cpu_seconds_per_cycle,
                r.database_cpu_seconds_per_cycle,
                r.generator_cpu_seconds_per_cycle,
            )
        )
        memory = "-" if r.rss_mb is None else f"{r.rss_mb:.0f} ({r.pss_mb:.0f})"
        errors = sum(r.errors.values())
        lines.append(
            f"| {r.name} | {r.cycles_per_second:.0f} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} |"
            f" {errors} | {cpu} | {memory} |"
        )
    return "\n".join(lines)


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def verdicts(service: list[Result], transport: Result, db: list[Result]) -> list[str]:
    spread, hot, light = service[:3]
    lower = min(transport.cycles_per_second, db[0].cycles_per_second)
    rss = max(r.rss_mb or 0.0 for r in service)
    errors = sum(sum(r.errors.values()) for r in (*service, transport))
    return [
        f"service / lower floor: {spread.cycles_per_second / lower:.2f}"
        f" (target ≥ {SHARE_OF_FLOOR_MIN})"
        f" {mark(spread.cycles_per_second >= SHARE_OF_FLOOR_MIN * lower)}",
        f"hot service / hot database floor: {hot.cycles_per_second / db[1].cycles_per_second:.2f}"
        f" (target ≥ {SHARE_OF_FLOOR_MIN})"
        f" {mark(hot.cycles_per_second >= SHARE_OF_FLOOR_MIN * db[1].cycles_per_second)}",
        f"p99 at {light.name.split(',')[1].strip()}: {_ms(light.p99_ms)} ms"
        f" (target ≤ {LIGHT_P99_MS_MAX:.0f}) {mark((light.p99_ms or 1e9) <= LIGHT_P99_MS_MAX)}",
        f"RSS of all service processes: {rss:.0f} MB (target ≤ {MEMORY_MB_MAX:.0f})"
        f" {mark(rss <= MEMORY_MB_MAX)}",
        f"errors: {errors} {mark(errors == 0)}",
    ]


def event_verdicts(events: Events, service: list[Result]) -> list[str]:
    spread, watched, delivering = service[0], service[3], service[-1]
    lines = [
        f"{watched.name.rsplit(', ', 1)[1]}: they cost"
        f" {1 - watched.cycles_per_second / spread.cycles_per_second:.1%} of the throughput"
    ]
    for when, found in (
        ("idle", events.alerts_idle),
        ("under the 64-client load", events.alerts_loaded),
    ):
        for place, latency in found.items():
            lines.append(
                f"alert latency on the {place}, {when}, {latency['crossings']:.0f} crossings:"
                f" p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms, max"
                f" {latency['max_ms']:.1f} ms (target p99 ≤ {ALERT_P99_MS_MAX:.0f})"
                f" {mark(latency['p99_ms'] <= ALERT_P99_MS_MAX)}"
            )
    if events.with_outbox and events.without_outbox:
        rounds = ", ".join(
            f"{on:.0f} / {off:.0f}"
            for on, off in zip(events.with_outbox, events.without_outbox, strict=True)
        )
        lines.append(
            f"outbox cost: cycles/s with / without it {rounds}; {events.outbox_cost:.1%} of"
            f" the throughput by the medians (target ≤ {OUTBOX_COST_MAX:.0%})"
            f" {mark(events.outbox_cost <= OUTBOX_COST_MAX)}"
        )
    lines.append(
        f"webhooks: {events.webhook_posts} POSTs received by the bench; delivering them cost"
        f" {1 - delivering.cycles_per_second / spread.cycles_per_second:.1%} of the"
        " throughput (the receiver runs on the same two cores)"
    )
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration-seconds",
        type=float,
        default=20.0,
        help="measured time of each scenario (default 20)",
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=3.0,
        help="unmeasured time before each scenario (default 3)",
    )
    parser.add_argument("--clients", type=int, default=64, help="clients under load (default 64)")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts (default 1000)")
    parser.add_argument(
        "--light-clients",
        type=int,
        default=8,
        help="clients of the light-load scenario (default 8)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="CREDITS_PROCESSES of the service (default: its own default)",
    )
    parser.add_argument(
        "--alert-crossings",
        type=int,
        default=alerts.CROSSINGS_DEFAULT,
        help=f"crossings timed for the alert latency (default {alerts.CROSSINGS_DEFAULT})",
    )
    parser.add_argument(
        "--idle-streams",
        type=int,
        default=IDLE_STREAMS_DEFAULT,
        help=f"WatchEvents streams held open in the streams row (default {IDLE_STREAMS_DEFAULT})",
    )
    parser.add_argument(
        "--outbox-rounds",
        type=int,
        default=2,
        help="rounds of the outbox's cost, each a load with it and one without (default 2)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds per scenario, for a smoke test"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration_seconds, args.warmup_seconds = 3.0, 1.0
        args.alert_crossings, args.outbox_rounds = min(args.alert_crossings, 20), 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="credits-bench-") as tmp:
        dev = Path(tmp) / "dev"
        ensure_dev_pki(dev / "pki")
        ensure_dev_callers(dev / "callers.toml")
        embedded = database.prepare_embedded(dev)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        service, events = bench_service(dev, embedded, args)
        db = bench_database(embedded.service_url, args)
        transport = bench_transport(dev, args)
    print(
        f"\n`make bench` on {os.cpu_count()} cores, {started},"
        f" {args.duration_seconds:.0f} s per scenario\n"
    )
    print(table([*service, transport, *db]))
    print()
    for line in [*verdicts(service, transport, db), *event_verdicts(events, service)]:
        print(f"- {line}")


if __name__ == "__main__":
    main()
