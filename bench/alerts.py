"""Alert latency: the time from the commit of a change that crosses a balance threshold
(its Reserve answered) to the BALANCE_LOW event's arrival on a WatchEvents stream and,
when the service delivers webhooks to a bench receiver, at that receiver; for `crossings`
crossings one after the other on one account of thresholds (ALERT_THRESHOLD), or as many
as fit in `seconds_max`. `python -m bench` runs it on the idle service and again under
the cycle load; `python -m bench.alerts --target … --pki …` runs it alone (stream only)."""

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import field_mask_pb2

from bench.loadgen import open_channel
from bench.receiver import Receiver
from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub

CROSSINGS_DEFAULT = 200
ALERT_THRESHOLD = 50
# Granted once; each crossing reserves CROSSING_AMOUNT (below the threshold) and
# releases it (back above).
FUNDING = 100
CROSSING_AMOUNT = 60
CALL_TIMEOUT_SECONDS = 10.0
PERCENT = 100
# How often the receiver (another thread) is looked at for an alert that has not arrived.
RECEIVER_POLL_SECONDS = 0.001


async def idle_streams(target: str, pki: Path, count: int, seconds: float) -> None:
    """`count` WatchEvents streams held open for `seconds`, each of an account nobody
    uses: streams that every call wakes and that find nothing (what consumers waiting
    for rare events cost the cycles)."""
    async with open_channel(pki, "events", target) as channel:
        stub = CreditsServiceStub(channel)
        calls = [
            stub.WatchEvents(pb.WatchEventsRequest(account_id=f"bench-idle-{uuid.uuid4().hex}"))
            for _ in range(count)
        ]
        await asyncio.sleep(seconds)
        for call in calls:
            call.cancel()


@dataclass(frozen=True)
class Crossing:
    """Seconds from a crossing's commit to its alert: on the stream, at the receiver."""

    stream: float
    webhook: float | None


async def _webhook_arrival(receiver: Receiver, event_id: str) -> float:
    async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
        # The receiver is another thread's: looked at, not awaited.
        while (arrived := receiver.arrived(event_id)) is None:  # noqa: ASYNC110
            await asyncio.sleep(RECEIVER_POLL_SECONDS)
    return arrived


async def measure(
    target: str,
    pki: Path,
    crossings: int,
    receiver: Receiver | None = None,
    seconds_max: float | None = None,
) -> list[Crossing]:
    """Each crossing's latencies."""
    account = f"bench-alerts-{uuid.uuid4().hex[:8]}"
    async with open_channel(pki, "ops", target) as channel:
        stub = CreditsServiceStub(channel)
        await stub.UpdateAccountSettings(
            pb.UpdateAccountSettingsRequest(
                account_id=account,
                settings=pb.AccountSettings(
                    balance_alert_thresholds=pb.BalanceAlertThresholds(thresholds=[ALERT_THRESHOLD])
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["balance_alert_thresholds"]),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        await stub.Grant(
            pb.GrantRequest(
                account_id=account,
                amount=FUNDING,
                source=pb.GRANT_SOURCE_PROMOTION,
                idempotency_key=uuid.uuid4().hex,
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        stream = stub.WatchEvents(
            pb.WatchEventsRequest(
                from_oldest=True, account_id=account, types=[pb.EVENT_TYPE_BALANCE_LOW]
            )
        )
        arrivals: asyncio.Queue[tuple[float, str]] = asyncio.Queue()

        async def read() -> None:
            async for response in stream:
                await arrivals.put((time.perf_counter(), response.event.event_id))

        reader = asyncio.create_task(read())
        latencies = []
        deadline = None if seconds_max is None else time.perf_counter() + seconds_max
        try:
            for _ in range(crossings):
                if deadline is not None and time.perf_counter() > deadline:
                    break
                reserved: pb.ReserveResponse = await stub.Reserve(
                    pb.ReserveRequest(
                        account_id=account,
                        amount=CROSSING_AMOUNT,
                        idempotency_key=uuid.uuid4().hex,
                    ),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                committed = time.perf_counter()
                arrived, event_id = await asyncio.wait_for(arrivals.get(), CALL_TIMEOUT_SECONDS)
                hooked = None if receiver is None else await _webhook_arrival(receiver, event_id)
                # An alert can beat the Reserve's answer to the client: that is 0.
                latencies.append(
                    Crossing(
                        max(0.0, arrived - committed),
                        None if hooked is None else max(0.0, hooked - committed),
                    )
                )
                await stub.Release(
                    pb.ReleaseRequest(
                        account_id=account, reservation_id=reserved.reservation.reservation_id
                    ),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
        finally:
            stream.cancel()
            reader.cancel()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=PERCENT, method="inclusive")
    return {
        "crossings": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": cuts[98] * 1000,
        "max_ms": max(latencies) * 1000,
    }


def summaries(crossings: list[Crossing]) -> dict[str, dict[str, float]]:
    """Per place the alert arrived ("stream", "webhook"), its latency summary."""
    found = {"stream": summary([c.stream for c in crossings])}
    hooked = [c.webhook for c in crossings if c.webhook is not None]
    if hooked:
        found["webhook"] = summary(hooked)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--crossings", type=int, default=CROSSINGS_DEFAULT)
    args = parser.parse_args()
    print(json.dumps(summaries(asyncio.run(measure(args.target, args.pki, args.crossings)))))


if __name__ == "__main__":
    main()
