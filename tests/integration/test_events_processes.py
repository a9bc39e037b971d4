"""WatchEvents against `python -m service` as a process: resuming from the last cursor
after a `kill -9` gives exactly the events committed since, and SIGTERM ends a stream
cleanly (status OK) instead of cutting it at the end of the grace."""

import asyncio
import signal
import time
from pathlib import Path

import grpc

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from tests.integration.test_events import STREAM_START_SECONDS, Watch, _grant, watching
from tests.service_process import ServiceProcess, production_env
from tests.support import free_port, new_id, open_channel

# A stream must end well before the shutdown grace (CREDITS_SHUTDOWN_GRACE_SECONDS).
GRACE_SECONDS = 30
STREAM_END_SECONDS = 10.0


async def _events_through(
    env: dict[str, str], pki: Path, account: str, amounts: list[int], **start: object
) -> list[pb.Event]:
    """Grant `amounts` through the service and read them from a stream opened at `start`."""
    async with open_channel(pki, "ops", env["CREDITS_GRPC_ADDR"]) as channel:
        stub = Stub(channel)
        async with watching(stub, account_id=account, **start) as watch:
            for amount in amounts:
                await _grant(stub, account, amount)
            events = await watch.take(len(amounts))
            await watch.quiet()
    return events


async def test_resuming_after_kill_9_gives_each_later_event_once(
    database_url: str, pki: Path
) -> None:
    env = production_env(database_url, pki, free_port())
    account = new_id()
    with ServiceProcess(env) as service:
        before = await _events_through(env, pki, account, [1, 2], from_oldest=True)
        service.signal(signal.SIGKILL)
    with ServiceProcess(env):
        after = await _events_through(env, pki, account, [3, 4], after_cursor=before[-1].cursor)
    assert [e.amount for e in before + after] == [1, 2, 3, 4]
    assert len({e.event_id for e in before + after}) == 4


async def test_sigterm_ends_a_stream_with_ok(database_url: str, pki: Path) -> None:
    env = production_env(
        database_url, pki, free_port(), CREDITS_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS)
    )
    with ServiceProcess(env) as service:
        async with open_channel(pki, "ops", env["CREDITS_GRPC_ADDR"]) as channel:
            watch = Watch(Stub(channel), pb.WatchEventsRequest(from_now=True))
            await watch.call.initial_metadata()
            await asyncio.sleep(STREAM_START_SECONDS)
            started = time.monotonic()
            service.signal(signal.SIGTERM)
            await asyncio.wait_for(watch.task, STREAM_END_SECONDS)
            assert await watch.call.code() is grpc.StatusCode.OK
            assert time.monotonic() - started < STREAM_END_SECONDS
