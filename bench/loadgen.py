"""The load generator, run in a process of its own: `clients` concurrent callers, each on
its own mTLS connection, each repeating Reserve then Confirm of 1 credit on one of
`accounts`, for `warmup_seconds` unmeasured and then `duration_seconds` measured.

Prints JSON lines on stdout: {"event": "measuring"} when the measured window opens (the
runner samples the service's CPU time and memory from then on) and {"event": "done", …}
with the cycle count, the errors by status code and the cycle latencies' percentiles.
"""

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import grpc

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc

# Every account gets this much once, far more than a run can spend at 1 credit a cycle.
FUNDING_CREDITS = 10**11
CALL_TIMEOUT_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 60.0
FUNDING_CONCURRENCY = 32
CREDITS_PER_CYCLE = 1
# Separate connections per client, as separate client processes would have: the
# service's processes share the port and each connection lands on one of them.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


def open_channel(pki: Path, caller: str, target: str) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{caller}.key").read_bytes(),
        certificate_chain=(pki / f"{caller}.pem").read_bytes(),
    )
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


async def fund(pki: Path, target: str, accounts: list[str]) -> None:
    """Grant every account its credits, idempotently (a rerun replays the same grant)."""
    async with open_channel(pki, "ops", target) as channel:
        await asyncio.wait_for(channel.channel_ready(), READY_TIMEOUT_SECONDS)
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        gate = asyncio.Semaphore(FUNDING_CONCURRENCY)

        async def grant(account: str) -> None:
            async with gate:
                await stub.Grant(
                    pb.GrantRequest(
                        account_id=account,
                        amount=FUNDING_CREDITS,
                        source=pb.GRANT_SOURCE_PURCHASE,
                        idempotency_key=f"bench-funding-{account}",
                    ),
                    timeout=CALL_TIMEOUT_SECONDS,
                )

        await asyncio.gather(*(grant(a) for a in accounts))


class Tally:
    def __init__(self) -> None:
        self.measuring = False
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def record(self, seconds: float) -> None:
        if self.measuring:
            self.latencies.append(seconds)

    def fail(self, code: str) -> None:
        if self.measuring:
            self.errors[code] = self.errors.get(code, 0) + 1


async def client(
    stub: credits_pb2_grpc.CreditsServiceStub,
    accounts: "itertools.cycle[str]",
    tally: Tally,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        account = next(accounts)
        started = time.perf_counter()
        try:
            reserved = await stub.Reserve(
                pb.ReserveRequest(
                    account_id=account,
                    amount=CREDITS_PER_CYCLE,
                    idempotency_key=uuid.uuid4().hex,
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            await stub.Confirm(
                pb.ConfirmRequest(
                    account_id=account,
                    reservation_id=reserved.reservation.reservation_id,
                    amount=CREDITS_PER_CYCLE,
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as err:
            tally.fail(err.code().name)
            continue
        tally.record(time.perf_counter() - started)


def percentile_ms(latencies: list[float], q: int) -> float | None:
    if len(latencies) < 2:
        return None
    return statistics.quantiles(latencies, n=100, method="inclusive")[q - 1] * 1000


async def run(args: argparse.Namespace) -> dict[str, object]:
    accounts = [f"{args.account_prefix}{i}" for i in range(args.accounts)]
    await fund(args.pki, args.target, accounts)
    channels = [open_channel(args.pki, "backend", args.target) for _ in range(args.clients)]
    tally = Tally()
    stop = asyncio.Event()
    try:
        await asyncio.gather(*(c.channel_ready() for c in channels))
        # Each client starts at its own account, so that they spread over all of them.
        tasks = [
            asyncio.create_task(
                client(
                    credits_pb2_grpc.CreditsServiceStub(channel),
                    itertools.cycle(accounts[i % len(accounts) :] + accounts[: i % len(accounts)]),
                    tally,
                    stop,
                )
            )
            for i, channel in enumerate(channels)
        ]
        await asyncio.sleep(args.warmup_seconds)
        tally.measuring = True
        print(json.dumps({"event": "measuring"}), flush=True)
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.sleep(args.duration_seconds)
        tally.measuring = False
        elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu_started
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return {
        "event": "done",
        "cycles": len(tally.latencies),
        "seconds": elapsed,
        "cpu_seconds": cpu_used,
        "errors": tally.errors,
        "p50_ms": percentile_ms(tally.latencies, 50),
        "p99_ms": percentile_ms(tally.latencies, 99),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port of the service")
    parser.add_argument("--pki", type=Path, required=True, help="folder of ca/backend/ops PEMs")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--account-prefix", default="bench-")
    parser.add_argument("--warmup-seconds", type=float, required=True)
    parser.add_argument("--duration-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
