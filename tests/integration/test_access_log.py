"""What an operator can find of a call: with CREDITS_ACCESS_LOG=on, one JSON line per
RPC under the request id the caller got in `x-request-id`; and in the metrics, every RPC,
streams such as reflection included, counted as often as it is timed."""

from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.access.interceptors import REQUEST_ID_HEADER
from tests.service_process import ServiceProcess, production_env
from tests.support import CALL_TIMEOUT_SECONDS, RunningServer, free_port, new_id, open_channel

REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
ACCESS_LOGGER = "credits.access"


async def balance_request_id(pki: Path, address: str) -> str:
    """The x-request-id of an OK GetBalance by the `ops` caller."""
    async with open_channel(pki, "ops", address) as channel:
        call = Stub(channel).GetBalance(
            pb.GetBalanceRequest(account_id=new_id()), timeout=CALL_TIMEOUT_SECONDS
        )
        await call
        assert await call.code() is grpc.StatusCode.OK
        return str(dict(await call.initial_metadata())[REQUEST_ID_HEADER])


async def test_an_ok_call_is_found_in_the_access_log_by_its_request_id(
    database_url: str, pki: Path
) -> None:
    env = production_env(
        database_url, pki, free_port(), CREDITS_PROCESSES="1", CREDITS_ACCESS_LOG="on"
    )
    with ServiceProcess(env) as service:
        request_id = await balance_request_id(pki, service.address)
        line = service.wait_for_log(
            lambda e: e.get("logger") == ACCESS_LOGGER and e.get("request_id") == request_id
        )
    assert line["msg"] == "rpc"
    assert line["level"] == "info"
    assert line["method"] == "/credits.v1.CreditsService/GetBalance"
    assert line["caller"] == "ops"
    assert line["code"] == "OK"
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] > 0


async def test_the_access_log_is_off_unless_asked_for(database_url: str, pki: Path) -> None:
    env = production_env(database_url, pki, free_port(), CREDITS_PROCESSES="1")
    with ServiceProcess(env) as service:
        await balance_request_id(pki, service.address)
        # Every line the service wrote, up to its exit.
        assert service.stop() == 0
        written = service.entries()
    assert any(e.get("msg") == "stopped" for e in written)
    assert not [e for e in written if e.get("logger") == ACCESS_LOGGER]


def samples(method: str) -> tuple[float, float]:
    """(credits_rpcs_total of `method` with code OK, its latency histogram's count)."""
    counted = REGISTRY.get_sample_value("credits_rpcs_total", {"method": method, "code": "OK"})
    timed = REGISTRY.get_sample_value("credits_rpc_duration_seconds_count", {"method": method})
    return counted or 0.0, timed or 0.0


async def test_reflection_is_counted_as_often_as_it_is_timed(
    credits_server: RunningServer, pki: Path
) -> None:
    counted_before, timed_before = samples(REFLECTION_METHOD)
    async with open_channel(pki, "ops", credits_server.address) as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        answers = [answer async for answer in stream]
    assert answers[0].list_services_response.service
    counted, timed = samples(REFLECTION_METHOD)
    assert (counted - counted_before, timed - timed_before) == (1.0, 1.0)
