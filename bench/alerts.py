"""Alert latency: the time from the commit of a change that crosses a balance threshold
(its Reserve answered) to the BALANCE_LOW event's arrival on a WatchEvents stream, for
`crossings` crossings one after the other on one account of thresholds
(ALERT_THRESHOLD). `python -m bench` runs it on an idle service; `python -m bench.alerts
--target … --pki …` runs it alone."""

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

from google.protobuf import field_mask_pb2

from bench.loadgen import open_channel
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


async def measure(target: str, pki: Path, crossings: int) -> list[float]:
    """Each crossing's latency in seconds."""
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
        arrivals: asyncio.Queue[float] = asyncio.Queue()

        async def read() -> None:
            async for _ in stream:
                await arrivals.put(time.perf_counter())

        reader = asyncio.create_task(read())
        latencies = []
        try:
            for _ in range(crossings):
                reserved: pb.ReserveResponse = await stub.Reserve(
                    pb.ReserveRequest(
                        account_id=account,
                        amount=CROSSING_AMOUNT,
                        idempotency_key=uuid.uuid4().hex,
                    ),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                committed = time.perf_counter()
                arrived = await asyncio.wait_for(arrivals.get(), CALL_TIMEOUT_SECONDS)
                # An alert can beat the Reserve's answer to the client: that is 0.
                latencies.append(max(0.0, arrived - committed))
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--crossings", type=int, default=CROSSINGS_DEFAULT)
    args = parser.parse_args()
    print(json.dumps(summary(asyncio.run(measure(args.target, args.pki, args.crossings)))))


if __name__ == "__main__":
    main()
