"""The servicer only translates: each field of a request reaches the ledger's command
as it came (times in the wire's shape, for validation to judge), and each field of the
answer reaches the response."""

import datetime
import uuid
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from credits.v1 import credits_pb2 as pb
from service.access import context
from service.ledger import commands
from service.ledger.model import Grant, GrantSource, Revocation
from service.ledger.operations import Deadline
from service.rpc.servicer import CreditsServicer

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
GRANT = Grant(uuid.UUID(int=1), "acct", 10, 4, GrantSource.PURCHASE, "pi_1", NOW, None, 6, 0, 0, 0)


class NoDeadline:
    """The one thing the servicer asks of a call's context: what is left of its deadline."""

    def time_remaining(self) -> None:
        return None


NO_DEADLINE = NoDeadline()


class Recorded(Exception):
    """Stops a call once its command is recorded."""


class RecordingLedger:
    def __init__(self) -> None:
        self.commands: list[Any] = []

    async def reserve(self, cmd: commands.ReserveCommand, *, deadline: Deadline) -> Any:
        self.commands.append(cmd)
        raise Recorded

    async def revoke(self, cmd: commands.RevokeCommand, *, deadline: Deadline) -> Revocation:
        self.commands.append(cmd)
        return Revocation(GRANT, 1, 2, 3, 4)


async def test_reserve_times_reach_the_command_in_the_wire_shape() -> None:
    ledger = RecordingLedger()
    context.caller.set("backend")
    request = pb.ReserveRequest(
        account_id="acct",
        amount=5,
        idempotency_key="k",
        ttl=duration_pb2.Duration(seconds=10**15, nanos=7),
        metadata={"trace_id": "t"},
    )
    with pytest.raises(Recorded):
        await CreditsServicer(ledger).Reserve(request, NO_DEADLINE)  # type: ignore[arg-type]
    (cmd,) = ledger.commands
    assert cmd == commands.ReserveCommand(
        caller="backend",
        account_id="acct",
        amount=5,
        idempotency_key="k",
        metadata={"trace_id": "t"},
        ttl=commands.WireTime(10**15, 7),
    )


async def test_revoke_translates_every_field_both_ways() -> None:
    ledger = RecordingLedger()
    context.caller.set("gateway")
    request = pb.RevokeRequest(
        external_ref="pi_1",
        idempotency_key="k",
        amount=0,
        reason="dispute won",
        cumulative_series="dispute:1",
        withdraw=True,
    )
    response = await CreditsServicer(ledger).Revoke(request, NO_DEADLINE)  # type: ignore[arg-type]
    assert ledger.commands == [
        commands.RevokeCommand(
            caller="gateway",
            account_id="",
            idempotency_key="k",
            external_ref="pi_1",
            reason="dispute won",
            cumulative_series="dispute:1",
            withdraw=True,
        )
    ]
    assert (
        response.revoked_amount,
        response.unrecovered_amount,
        response.restored_amount,
        response.cancelled_amount,
    ) == (1, 2, 3, 4)
    assert (response.grant.remaining_amount, response.grant.revoked_amount) == (4, 6)
    assert not response.grant.HasField("expires_at")
    timed = pb.RevokeRequest(
        external_ref="pi_1", idempotency_key="k2", amount=5, cumulative_series="refund:ch_1"
    )
    timed.as_of.seconds, timed.as_of.nanos = 1_733_000_000, 7
    await CreditsServicer(ledger).Revoke(timed, NO_DEADLINE)  # type: ignore[arg-type]
    assert ledger.commands[-1].as_of == commands.WireTime(1_733_000_000, 7)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(NOW)
    assert response.grant.created_at == stamp
