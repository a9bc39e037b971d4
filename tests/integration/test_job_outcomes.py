"""Reservations finished are counted by job type and outcome, once each: a configured job
type under its own label, any other as `other`, a replayed Confirm or Release not again."""

from pathlib import Path

from prometheus_client import REGISTRY

from credits.v1 import credits_pb2, credits_pb2_grpc
from tests.support import (
    CALL_TIMEOUT_SECONDS,
    funded_account,
    new_id,
    open_channel,
    start_server,
)

FINISHED = "credits_reservations_finished_total"
CAPTURED = "credits_captured_credits_total"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_finished_reservations_are_counted_by_job_type_and_outcome_once(
    database_url: str, pki: Path
) -> None:
    server = await start_server(database_url, pki, CREDITS_JOB_TYPES="render, upscale")
    try:
        async with (
            open_channel(pki, "gateway", server.address) as granting,
            open_channel(pki, "backend", server.address) as using,
        ):
            gateway = credits_pb2_grpc.CreditsServiceStub(granting)
            backend = credits_pb2_grpc.CreditsServiceStub(using)
            account = await funded_account(gateway, 1000)

            async def reserve(job_type: str) -> str:
                answer = await backend.Reserve(
                    credits_pb2.ReserveRequest(
                        account_id=account,
                        amount=100,
                        idempotency_key=new_id("hold"),
                        job_type=job_type,
                    ),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                return str(answer.reservation.reservation_id)

            before = {
                "render confirmed": value(FINISHED, job_type="render", outcome="confirmed"),
                "render captured": value(CAPTURED, job_type="render"),
                "other released": value(FINISHED, job_type="other", outcome="released"),
            }
            confirmed = await reserve("render")
            released = await reserve("a-type-nobody-configured")
            confirm = credits_pb2.ConfirmRequest(
                account_id=account, reservation_id=confirmed, amount=60
            )
            release = credits_pb2.ReleaseRequest(account_id=account, reservation_id=released)
            for _ in range(2):  # the second time a replay, answered as the first
                await backend.Confirm(confirm, timeout=CALL_TIMEOUT_SECONDS)
                await backend.Release(release, timeout=CALL_TIMEOUT_SECONDS)
    finally:
        await server.stop()

    assert value(FINISHED, job_type="render", outcome="confirmed") == before["render confirmed"] + 1
    assert value(CAPTURED, job_type="render") == before["render captured"] + 60
    assert value(FINISHED, job_type="other", outcome="released") == before["other released"] + 1
    assert value(FINISHED, job_type="a-type-nobody-configured", outcome="released") == 0.0
