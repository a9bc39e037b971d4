"""A WatchEvents consumer through the whole run: it reads the stream from the oldest
event, and whenever its stream ends (an instance stopped, was killed, or failed) it
resumes after the last cursor it received, on either instance. Afterwards the events it
received must be exactly the outbox's, up to its last cursor: each once, in the
stream's order (checks.check_stream)."""

import asyncio
import random

import grpc

from chaos.cluster import Cluster
from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub

# After a stream ends, the next attempt starts this long after.
RECONNECT_SECONDS = 0.2
# How long the watcher may take to catch up with the outbox once the traffic stopped.
CATCH_UP_SECONDS_MAX = 30.0
POLL_SECONDS = 0.2
TYPE_PREFIX = "EVENT_TYPE_"


class Watcher:
    def __init__(self, cluster: Cluster, seed: int) -> None:
        self._cluster = cluster
        self._rng = random.Random(f"{seed}-watcher")
        # (event id, account, cursor) in the order received.
        self.received: list[tuple[str, str, str]] = []
        # Event id → its type, spelled as in a webhook's body ("GRANTED").
        self.types: dict[str, str] = {}
        self.cursor: str | None = None
        self.reconnects = 0

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            address = self._rng.choice(self._cluster.addresses)
            request = (
                pb.WatchEventsRequest(from_oldest=True)
                if self.cursor is None
                else pb.WatchEventsRequest(after_cursor=self.cursor)
            )
            try:
                async with self._cluster.channel("events", address) as channel:
                    async for response in CreditsServiceStub(channel).WatchEvents(request):
                        event = response.event
                        self.received.append((event.event_id, event.account_id, event.cursor))
                        self.types[event.event_id] = pb.EventType.Name(event.type).removeprefix(
                            TYPE_PREFIX
                        )
                        self.cursor = event.cursor
            except grpc.aio.AioRpcError:
                pass  # an instance down or stopping: the other, or this one again
            self.reconnects += 1
            await asyncio.sleep(RECONNECT_SECONDS)
