"""Faults on a schedule and at random: the kinds take turns (so each kind is injected
about as often as every other), at random moments around the interval.

- service_killed: SIGKILL of one instance, restarted at once;
- connections_terminated: pg_terminate_backend of every connection of the service;
- database_restarted: PostgreSQL stopped hard (immediate mode) and started again;
- instance_down: one instance killed and kept down while the other carries on;
- redis_down: Redis killed for a while; calls must be refused (fail closed), not passed.
"""

import asyncio
import random
import time
from dataclasses import dataclass, field

from chaos.cluster import INSTANCES, Cluster
from chaos.report import Report

KINDS = (
    "service_killed",
    "connections_terminated",
    "database_restarted",
    "instance_down",
    "redis_down",
)
OUTAGE_SECONDS_MIN = 2.0
OUTAGE_SECONDS_MAX = 4.0
# Calls that began before Redis went away may still finish on a connection that was
# open; only calls wholly inside the outage, after this margin, must have been refused.
REDIS_DOWN_MARGIN_SECONDS = 0.6


@dataclass
class Faults:
    cluster: Cluster
    report: Report
    rng: random.Random
    interval_seconds: float
    # Windows (start, end) in time.monotonic(): Redis gone, one instance down.
    redis_down: list[tuple[float, float]] = field(default_factory=list)
    instance_down: list[tuple[float, float]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        turn = 0
        while not stop.is_set():
            pause = self.rng.uniform(0.5, 1.5) * self.interval_seconds
            try:
                await asyncio.wait_for(stop.wait(), pause)
                return
            except TimeoutError:
                pass
            kind = KINDS[turn % len(KINDS)]
            turn += 1
            await self.inject(kind)

    async def inject(self, kind: str) -> None:
        index = self.rng.randrange(INSTANCES)
        if kind == "service_killed":
            self.cluster.kill_service(index)
            self.cluster.start_service(index)
            await self.cluster.wait_serving(index)
        elif kind == "connections_terminated":
            await self.cluster.terminate_service_connections()
        elif kind == "database_restarted":
            await asyncio.to_thread(self.cluster.restart_database)
        elif kind == "instance_down":
            self.cluster.kill_service(index)
            started = time.monotonic()
            await asyncio.sleep(self.rng.uniform(OUTAGE_SECONDS_MIN, OUTAGE_SECONDS_MAX))
            self.instance_down.append((started, time.monotonic()))
            self.cluster.start_service(index)
            await self.cluster.wait_serving(index)
        elif kind == "redis_down":
            self.cluster.kill_redis()
            started = time.monotonic()
            await asyncio.sleep(self.rng.uniform(OUTAGE_SECONDS_MIN, OUTAGE_SECONDS_MAX))
            self.redis_down.append((started + REDIS_DOWN_MARGIN_SECONDS, time.monotonic()))
            self.cluster.start_redis()
        self.report.faults[kind] += 1

    def check(self, successes: list[tuple[float, float]]) -> None:
        """Redis down: no call went through; one instance down: the other served."""
        passed = sum(
            1
            for start, end in successes
            for down, up in self.redis_down
            if down <= start and end <= up
        )
        if passed:
            self.report.violation(f"{passed} calls succeeded while Redis was down")
        self.report.checks.append(f"no call passed during {len(self.redis_down)} Redis outages")
        for down, up in self.instance_down:
            if not any(down <= start and end <= up for start, end in successes):
                self.report.violation("no call succeeded while one instance was down")
        self.report.checks.append(
            f"the other instance served during each of {len(self.instance_down)} instance outages"
        )
