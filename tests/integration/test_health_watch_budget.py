"""Health `Watch` streams of peers that are no caller never take a caller's place: with
as many of them open as the server has concurrent RPCs (256 over 4 connections in tls
mode without a key; 64 with a certificate of the CA naming no caller in mtls mode), a
caller's GetBalance is served; streams beyond their own budget are refused with
RESOURCE_EXHAUSTED, while `Check` and callers' own `Watch` streams still work."""

import asyncio
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credits.v1 import credits_pb2
from credits.v1.credits_pb2_grpc import CreditsServiceStub
from scripts.devcallers import api_key_path
from scripts.devpki import issue
from service.rpc.health import ANONYMOUS_WATCH_SUBJECT, ANONYMOUS_WATCHES_MAX
from tests.access_support import detail_of, dev_ca, tls_channel, with_key
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import error_details, new_id, open_channel, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="")


async def open_watches(
    channels: list[grpc.aio.Channel], count: int
) -> tuple[list[grpc.aio.UnaryStreamCall], list[grpc.aio.AioRpcError]]:
    """`count` Watch streams spread over `channels`: (those answering SERVING, refusals)."""
    calls = [
        health_pb2_grpc.HealthStub(channels[i % len(channels)]).Watch(HEALTH_REQUEST)
        for i in range(count)
    ]

    async def first(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError | None:
        try:
            answer = await asyncio.wait_for(call.read(), T)
        except grpc.aio.AioRpcError as err:
            return err
        assert answer.status == SERVING
        return None

    outcomes = await asyncio.gather(*(first(call) for call in calls))
    accepted = [call for call, refused in zip(calls, outcomes, strict=True) if refused is None]
    return accepted, [refused for refused in outcomes if refused is not None]


def assert_budget_refusals(refusals: list[grpc.aio.AioRpcError]) -> None:
    for refused in refusals:
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_details(refused)[0] == "RATE_LIMITED"
        quota = detail_of(refused, error_details_pb2.QuotaFailure)
        assert [v.subject for v in quota.violations] == [ANONYMOUS_WATCH_SUBJECT]


async def test_tls_mode_256_watches_without_a_key_leave_callers_served(
    database_url: str, pki: Path
) -> None:
    server = await start_server(database_url, pki, CREDITS_AUTH_MODE="tls")
    watches: list[grpc.aio.UnaryStreamCall] = []
    channels = [tls_channel(pki, server.address) for _ in range(4)]
    try:
        assert server.settings.max_concurrent_rpcs == 256
        watches, refusals = await open_watches(channels, 256)
        key = api_key_path(pki / "callers.toml", "backend").read_text().strip()
        backend = CreditsServiceStub(channels[0])
        await backend.GetBalance(
            credits_pb2.GetBalanceRequest(account_id=new_id()), timeout=T, metadata=with_key(key)
        )
        assert len(watches) == ANONYMOUS_WATCHES_MAX
        assert_budget_refusals(refusals)
        health = health_pb2_grpc.HealthStub(channels[1])
        assert (await health.Check(HEALTH_REQUEST, timeout=T)).status == SERVING
        own = health.Watch(HEALTH_REQUEST, timeout=T, metadata=with_key(key))
        assert (await own.read()).status == SERVING, "a caller's Watch is not anonymous"
        own.cancel()
    finally:
        for watch in watches:
            watch.cancel()
        for channel in channels:
            await channel.close()
        await server.stop()


async def test_mtls_mode_64_watches_of_a_certificate_naming_no_caller(
    database_url: str, pki: Path
) -> None:
    server = await start_server(database_url, pki, CREDITS_MAX_CONCURRENT_RPCS="64")
    probe = issue(dev_ca(pki), "kubelet")
    watches: list[grpc.aio.UnaryStreamCall] = []
    try:
        async with (
            tls_channel(pki, server.address, probe) as anonymous,
            open_channel(pki, "backend", server.address) as caller,
        ):
            watches, refusals = await open_watches([anonymous], 64)
            await CreditsServiceStub(caller).GetBalance(
                credits_pb2.GetBalanceRequest(account_id=new_id()), timeout=T
            )
            assert len(watches) == ANONYMOUS_WATCHES_MAX
            assert_budget_refusals(refusals)
            # A stream that ends gives its place back.
            watches.pop().cancel()
            again, refused = await open_watches([anonymous], 1)
            assert (len(again), refused) == (1, [])
            watches += again
    finally:
        for watch in watches:
            watch.cancel()
        await server.stop()
