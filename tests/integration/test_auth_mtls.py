"""Identity from client certificates and default-deny authorization, through the shared
mTLS server and the development callers."""

from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from scripts.devcallers import DEV_RPCS
from scripts.devpki import issue, make_ca
from service.access import contract
from service.access.callers import ANY_RPC
from service.access.interceptors import REQUEST_ID_HEADER
from service.ops import metrics
from tests.access_support import dev_ca, tls_channel
from tests.service_process import ServiceProcess, production_env
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, error_details, free_port, new_id, open_channel

# A handshake that is refused fails at once; no need to wait for the long test timeout.
REFUSED_CALL_TIMEOUT_SECONDS = 5.0
# What each development caller may call, as scripts/devcallers.py writes it: "*" is every
# RPC of the contract.
DEV_PERMISSIONS = {
    caller: set(contract.RPC_NAMES) if rpcs == (ANY_RPC,) else set(rpcs)
    for caller, rpcs in DEV_RPCS.items()
}

# How long an allowed stream is read before its deadline ends it.
STREAM_SECONDS = 1.0


async def _read_stream(stream: Any) -> None:
    """Read a stream; an allowed one (WatchEvents from now) runs until its deadline,
    which ends it without a status of the service's."""
    try:
        async for _ in stream:
            pass
    except grpc.aio.AioRpcError as err:
        if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            raise


def authentication_failures() -> float:
    return REGISTRY.get_sample_value("credits_authentication_failures_total") or 0.0


def rpcs_served() -> float:
    """RPCs the in-process servers have answered, whatever the code."""
    return sum(
        sample.value
        for metric in metrics.RPCS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


async def refused_handshake(channel: grpc.aio.Channel) -> None:
    """A call over a channel whose client certificate the server refuses in the TLS
    handshake: it fails, and no RPC is served.

    The client reports the failed connection as UNAVAILABLE, and, when the connection
    is torn down while the call is starting (TLS 1.3 lets the client send its call before
    the server has checked the certificate), as INTERNAL "Failed execute_batch" of its
    own making (grpc/grpc#36066): never a status the service sent."""
    served_before = rpcs_served()
    request = pb.GetBalanceRequest(account_id=new_id())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await Stub(channel).GetBalance(request, timeout=REFUSED_CALL_TIMEOUT_SECONDS)
    err = caught.value
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), err
    assert rpc_status.from_call(err) is None, "the service answered a refused connection"
    assert REQUEST_ID_HEADER not in dict(err.initial_metadata() or ())
    assert rpcs_served() == served_before


async def test_no_client_certificate_is_refused(credits_server: RunningServer, pki: Path) -> None:
    async with tls_channel(pki, credits_server.address) as channel:
        await refused_handshake(channel)


async def test_a_certificate_of_another_ca_is_refused(
    credits_server: RunningServer, pki: Path
) -> None:
    impostor = issue(make_ca("another CA"), "backend")
    async with tls_channel(pki, credits_server.address, impostor) as channel:
        await refused_handshake(channel)


async def test_an_expired_certificate_is_refused(credits_server: RunningServer, pki: Path) -> None:
    expired = issue(dev_ca(pki), "backend", expired=True)
    async with tls_channel(pki, credits_server.address, expired) as channel:
        await refused_handshake(channel)


async def test_a_new_certificate_of_a_known_caller_works(
    credits_server: RunningServer, pki: Path
) -> None:
    """Rotating a certificate: a new one of the same name from the same CA is accepted
    at once, with no change to the callers file (and the odd certificates below are
    refused for what is odd about them, not for how the test makes them)."""
    renewed = issue(dev_ca(pki), "backend")
    async with tls_channel(pki, credits_server.address, renewed) as channel:
        balance = await Stub(channel).GetBalance(
            pb.GetBalanceRequest(account_id=new_id()), timeout=T
        )
    assert balance.available == 0


async def test_a_valid_certificate_of_an_unknown_caller_is_unauthenticated(
    credits_server: RunningServer, pki: Path
) -> None:
    stranger = issue(dev_ca(pki), "mallory")
    failures_before = authentication_failures()
    async with tls_channel(pki, credits_server.address, stranger) as channel:
        call = Stub(channel).GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_details(caught.value)[0] == "UNAUTHENTICATED"
        assert caught.value.details() == "missing or invalid credentials"
        # Refusals are sanitized and identified like every other failure.
        assert dict(await call.initial_metadata()).get(REQUEST_ID_HEADER)
    assert authentication_failures() == failures_before + 1


async def test_an_unknown_caller_cannot_use_reflection(
    credits_server: RunningServer, pki: Path
) -> None:
    stranger = issue(dev_ca(pki), "mallory")
    async with tls_channel(pki, credits_server.address, stranger) as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("caller", "rpc"),
    [(caller, rpc) for caller in sorted(DEV_PERMISSIONS) for rpc in contract.RPC_NAMES],
)
async def test_development_callers_have_exactly_their_permissions(
    credits_server: RunningServer, pki: Path, caller: str, rpc: str
) -> None:
    async with open_channel(pki, caller, credits_server.address) as channel:
        method = getattr(Stub(channel), rpc)
        reason = ""
        try:
            # An empty request: an allowed call fails validation (or finds nothing),
            # a forbidden one is refused before any of that.
            request = contract.request_type(rpc)()
            if contract.SERVICE.methods_by_name[rpc].server_streaming:
                await _read_stream(method(request, timeout=STREAM_SECONDS))
            else:
                await method(request, timeout=T)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
            reason = error_details(err)[0]
    if rpc in DEV_PERMISSIONS[caller]:
        assert code != grpc.StatusCode.PERMISSION_DENIED
    else:
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


async def test_health_needs_no_caller(credits_server: RunningServer, pki: Path) -> None:
    # mTLS still wants a certificate in the handshake, but any one of the CA will do.
    probe = issue(dev_ca(pki), "kubelet")
    async with tls_channel(pki, credits_server.address, probe) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=T)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=T)
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


async def test_reflection_is_open_to_every_known_caller(
    credits_server: RunningServer, pki: Path
) -> None:
    async with open_channel(pki, "gateway", credits_server.address) as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T
        )
        services = [s.name async for r in stream for s in r.list_services_response.service]
    assert "credits.v1.CreditsService" in services


def tls_handshakes() -> float:
    return REGISTRY.get_sample_value("credits_tls_handshakes_total") or 0.0


async def test_refused_handshakes_are_counted(credits_server: RunningServer, pki: Path) -> None:
    """What Python can see of a refused handshake: that it began (the refusal itself
    happens inside gRPC's TLS layer)."""
    before = tls_handshakes()
    async with tls_channel(pki, credits_server.address) as channel:
        await refused_handshake(channel)
    assert tls_handshakes() > before


def scrape(address: str, metric: str) -> float:
    text = httpx.get(f"http://{address}/metrics", timeout=T).text
    samples = [line.split()[1] for line in text.splitlines() if line.startswith(metric + " ")]
    return float(samples[0]) if samples else 0.0


async def test_refused_handshakes_keep_the_log_stream_json(database_url: str, pki: Path) -> None:
    """gRPC's own plain-text lines (one per refused handshake) stay out of the service's
    stderr, which holds only JSON lines."""
    metrics_address = f"127.0.0.1:{free_port()}"
    env = production_env(database_url, pki, free_port(), CREDITS_METRICS_ADDR=metrics_address)
    with ServiceProcess(env) as service:
        handshakes_before = scrape(metrics_address, "credits_tls_handshakes_total")
        expired = issue(dev_ca(pki), "backend", expired=True)
        for client in (None, expired, issue(make_ca("another CA"), "backend")):
            async with tls_channel(pki, service.address, client) as channel:
                await refused_handshake(channel)
        assert scrape(metrics_address, "credits_tls_handshakes_total") >= handshakes_before + 3
        assert service.stop() == 0
        entries = service.entries()
    assert [e["msg"] for e in entries if e["level"] in ("warning", "error")] == []
