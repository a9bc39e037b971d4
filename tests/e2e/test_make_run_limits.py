"""`make run`'s rate limits are the configured ones for a client with one connection:
its runner starts a Redis in which the service's processes (one per core) count
together, and stops it with the rest."""

import asyncio
import json

import grpc

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service import settings
from tests.e2e.runner import DevRun
from tests.support import CALL_TIMEOUT_SECONDS, new_id, open_channel

# The default per-account Reserve limit, "50/second": all of it at once.
LIMIT = 50


async def reserve_codes(devrun: DevRun, account: str) -> list[grpc.StatusCode]:
    async def one(stub: Stub) -> grpc.StatusCode:
        request = pb.ReserveRequest(account_id=account, amount=1, idempotency_key=new_id())
        try:
            await stub.Reserve(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    async with open_channel(devrun.dev_dir / "pki", "backend", devrun.address) as channel:
        stub = Stub(channel)
        return list(await asyncio.gather(*(one(stub) for _ in range(LIMIT))))


def test_one_connection_gets_the_whole_per_account_limit_under_make_run(devrun: DevRun) -> None:
    assert f"{LIMIT}/second" == settings.RESERVE_RATE_PER_ACCOUNT_DEFAULT
    devrun.start()
    supervising = [
        json.loads(line)
        for line in devrun.log().splitlines()
        if line.startswith("{") and '"supervising"' in line
    ]
    assert [entry["processes"] for entry in supervising] == [settings.cores()]
    codes = asyncio.run(reserve_codes(devrun, new_id()))
    # The account holds no credits: every call the limiter let in is refused by the ledger.
    assert codes == [grpc.StatusCode.FAILED_PRECONDITION] * LIMIT
    redis = [p for p in devrun.processes() if p.name() == "redis-server"]
    assert len(redis) == 1
    assert devrun.stop() == 0
    assert not redis[0].is_running()
