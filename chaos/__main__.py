"""`python -m chaos` (`make chaos`): the service under load, faults and fuzzing, then
checked against what its clients were told. Starts its own PostgreSQL, Redis, two
service instances and the gateway in a temporary directory, runs concurrent clients
(chaos/workload.py), injects faults (chaos/faults.py) and fuzzes (chaos/fuzz.py) for
`--duration` seconds, then checks the acknowledgement log against the database
(chaos/checks.py) and prints a report. Exit status 1 on any violation or unexpected
status."""

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos import checks
from chaos.cluster import Cluster
from chaos.faults import Faults
from chaos.fuzz import Fuzzer
from chaos.receiver import (
    FILTERED_ENDPOINT_NAME,
    FILTERED_WEBHOOK_SECRET,
    FILTERED_WEBHOOK_TYPES,
    SERVICE_WEBHOOK_SECRET,
    WebhookReceiver,
)
from chaos.report import Report
from chaos.watcher import CATCH_UP_SECONDS_MAX, POLL_SECONDS, Watcher
from chaos.workload import Workload, new_run_id
from credits.v1.credits_pb2_grpc import CreditsServiceStub

DURATION_SECONDS_DEFAULT = 180.0
CLIENTS_DEFAULT = 16
ACCOUNTS_DEFAULT = 6
FAULT_INTERVAL_SECONDS_DEFAULT = 6.0
FUZZERS_DEFAULT = 2
# Time for the clients' last calls to finish (each retries for at most its own bound).
DRAIN_SECONDS_MAX = 150.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=DURATION_SECONDS_DEFAULT, help="seconds")
    parser.add_argument("--clients", type=int, default=CLIENTS_DEFAULT)
    parser.add_argument("--accounts", type=int, default=ACCOUNTS_DEFAULT)
    parser.add_argument(
        "--fault-interval", type=float, default=FAULT_INTERVAL_SECONDS_DEFAULT, help="seconds"
    )
    parser.add_argument("--fuzzers", type=int, default=FUZZERS_DEFAULT)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory and logs")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, directory: Path) -> Report:
    report = Report()
    # SIGTERM stops the run like Ctrl-C does: every process it started is stopped.
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    report.checks.append(f"seed {seed}")
    cluster = Cluster(directory)
    try:
        await cluster.start()
        await exercise(args, cluster, report, seed)
    finally:
        await cluster.stop()
    return report


async def _caught_up(watcher: Watcher, engine: AsyncEngine, accounts: list[str]) -> None:
    """Give the stream consumer time to receive every event of the run's accounts."""
    mine = set(accounts)
    deadline = time.monotonic() + CATCH_UP_SECONDS_MAX
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            stored = await conn.scalar(
                text("SELECT count(*) FROM ledger_events WHERE account_id = ANY(:accounts)"),
                {"accounts": accounts},
            )
        if sum(1 for _, account, _ in watcher.received if account in mine) >= (stored or 0):
            return
        await asyncio.sleep(POLL_SECONDS)


def _webhook_endpoints(cluster: Cluster) -> list[tuple[WebhookReceiver, checks.Endpoint]]:
    """The run's webhook endpoints: CREDITS_WEBHOOK_URL's, of every type, and the
    endpoints file's, of some."""
    return [
        (cluster.webhooks, checks.Endpoint("the URL's endpoint", SERVICE_WEBHOOK_SECRET)),
        (
            cluster.filtered_webhooks,
            checks.Endpoint(
                FILTERED_ENDPOINT_NAME, FILTERED_WEBHOOK_SECRET, FILTERED_WEBHOOK_TYPES
            ),
        ),
    ]


async def _delivered(
    endpoints: list[tuple[WebhookReceiver, checks.Endpoint]], watcher: Watcher, accounts: list[str]
) -> None:
    """Give each endpoint's worker time to deliver the last event for it that the stream
    carried. The watcher has stopped, so its list is final: the sweeper settling what
    time decides makes events after it, which no check expects. Delivery is in order, so
    the last one's arrival means every one before it was sent."""
    mine = set(accounts)
    deadline = time.monotonic() + CATCH_UP_SECONDS_MAX
    for receiver, endpoint in endpoints:
        last = next(
            (
                e
                for e, account, _ in reversed(watcher.received)
                if account in mine
                and (endpoint.types is None or watcher.types[e] in endpoint.types)
            ),
            None,
        )
        while last is not None and time.monotonic() < deadline:
            if any(last.encode() in hook.body for hook in receiver.snapshot()):
                break
            await asyncio.sleep(POLL_SECONDS)


def _write_evidence(cluster: Cluster, watcher: Watcher) -> None:
    """The stream and the webhooks as received, for a post-mortem with --keep."""
    with (cluster.dir / "stream.jsonl").open("w") as out:
        for event_id, account, cursor in watcher.received:
            out.write(json.dumps({"event_id": event_id, "account": account, "cursor": cursor}))
            out.write("\n")
    with (cluster.dir / "webhooks.jsonl").open("w") as out:
        for hook in cluster.webhooks.snapshot():
            out.write(
                json.dumps({"arrived_at": hook.arrived_at.isoformat(), "body": hook.body.decode()})
            )
            out.write("\n")


async def exercise(args: argparse.Namespace, cluster: Cluster, report: Report, seed: int) -> None:
    run_id = new_run_id()
    accounts = [f"{run_id}-acct{i}" for i in range(args.accounts)]
    channels = {
        caller: [cluster.channel(caller, a) for a in cluster.addresses]
        for caller in ("backend", "gateway", "ops")
    }
    stubs = {caller: [CreditsServiceStub(c) for c in cs] for caller, cs in channels.items()}
    workload = Workload(
        run_id=run_id,
        accounts=accounts,
        stubs=stubs,
        report=report,
        log_path=cluster.dir / "acks.jsonl",
        seed=seed,
    )
    await workload.set_price(stubs["ops"][0])
    faults = Faults(cluster, report, random.Random(f"{seed}-faults"), args.fault_interval)
    fuzzer = Fuzzer(cluster, report, seed)
    stop_faults = asyncio.Event()
    await workload.configure()
    started = time.monotonic()
    tasks = [asyncio.create_task(workload.client(i)) for i in range(args.clients)]
    fuzzing = [
        asyncio.create_task(fuzzer.grpc_loop(workload.stopping)) for _ in range(args.fuzzers)
    ]
    fuzzing.append(asyncio.create_task(fuzzer.webhook_loop(workload.stopping)))
    watcher = Watcher(cluster, seed)
    watching = asyncio.create_task(watcher.run())
    injecting = asyncio.create_task(faults.run(stop_faults))
    try:
        await asyncio.sleep(args.duration)
        stop_faults.set()
        await injecting
        workload.stopping.set()
        async with asyncio.timeout(DRAIN_SECONDS_MAX):
            await asyncio.gather(*tasks, *fuzzing)
        report.duration_seconds = time.monotonic() - started
        engine = await cluster.admin_engine()
        await _caught_up(watcher, engine, accounts)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await _delivered(_webhook_endpoints(cluster), watcher, accounts)
        faults.check(workload.successes)
        # The services stop first, so that nothing (the sweeper) settles while checking.
        for index in range(len(cluster.services)):
            cluster.kill_service(index)
        await checks.check_log(engine, workload.acks, accounts, report)
        await checks.check_accounts(engine, accounts, report)
        await checks.check_events(engine, accounts, report)
        await checks.check_stream(engine, watcher.received, accounts, report)
        _write_evidence(cluster, watcher)
        for receiver, endpoint in _webhook_endpoints(cluster):
            checks.check_webhooks(
                endpoint,
                receiver.snapshot(),
                watcher.received,
                accounts,
                report,
                stream_types=watcher.types,
                incomplete=receiver.incomplete,
            )
        await checks.check_reconcile(engine, report)
        await fuzzer.check(engine, accounts)
    finally:
        stop_faults.set()
        workload.stopping.set()
        for task in [*tasks, *fuzzing, injecting, watching]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        workload.close()
        for channel in [c for cs in channels.values() for c in cs]:
            await channel.close()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    directory = Path(tempfile.mkdtemp(prefix="credits-chaos-"))
    try:
        report = asyncio.run(run(args, directory))
    finally:
        if args.keep:
            print(f"run directory kept: {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    text = report.text()
    print(text)
    if args.report is not None:
        args.report.write_text(text + "\n", encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
