"""The servicer's translation of the reads and the extension: times and kinds reach the
ledger's commands in the wire's shape (validation judges them), and every field of the
answer reaches the response."""

import datetime
import uuid
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from credits.v1 import credits_pb2 as pb
from service.ledger import commands, model
from service.ledger.operations import Deadline
from service.rpc.servicer import CreditsServicer

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
GRANT_ID = uuid.UUID(int=1)
RESERVATION = model.Reservation(
    uuid.UUID(int=2),
    "acct",
    10,
    6,
    model.ReservationStatus.CONFIRMED,
    "job-1",
    "story",
    "",
    NOW,
    NOW + datetime.timedelta(minutes=15),
    4,
    "",
)
ENTRY = model.LedgerEntry(
    7, model.EntryKind.CONFIRM_RETURN, 4, GRANT_ID, uuid.UUID(int=2), None, NOW, 90
)


class NoDeadline:
    """The one thing the servicer asks of a call's context: what is left of its deadline."""

    def time_remaining(self) -> None:
        return None


NO_DEADLINE = NoDeadline()


class RecordingLedger:
    def __init__(self) -> None:
        self.commands: list[Any] = []

    async def entries(self, query: commands.EntriesQuery, *, deadline: Deadline) -> model.EntryPage:
        self.commands.append(query)
        return model.EntryPage((ENTRY,), "next")

    async def reservation(
        self, query: commands.ReservationQuery, *, deadline: Deadline
    ) -> model.ReservationDetail:
        self.commands.append(query)
        allocation = model.Allocation(GRANT_ID, 10, 4)
        return model.ReservationDetail(RESERVATION, (allocation,), NOW + datetime.timedelta(days=7))

    async def extend(self, cmd: commands.ExtendCommand, *, deadline: Deadline) -> model.Extension:
        self.commands.append(cmd)
        return model.Extension(RESERVATION, NOW + datetime.timedelta(days=7))


async def test_list_entries_passes_times_and_kinds_as_received_and_answers_every_field() -> None:
    ledger = RecordingLedger()
    request = pb.ListEntriesRequest(
        account_id="acct",
        page_size=3,
        page_token="t",
        since=timestamp_pb2.Timestamp(seconds=10**15, nanos=-1),
        kinds=[pb.ENTRY_KIND_GRANT, 99],  # type: ignore[list-item]
    )
    response = await CreditsServicer(ledger).ListEntries(request, NO_DEADLINE)  # type: ignore[arg-type]
    assert ledger.commands == [
        commands.EntriesQuery(
            account_id="acct",
            page_size=3,
            page_token="t",
            since=commands.WireTime(10**15, -1),
            until=None,
            kinds=(1, 99),
        )
    ]
    (entry,) = response.entries
    assert (entry.entry_id, entry.kind, entry.amount, entry.balance_after) == (
        7,
        pb.ENTRY_KIND_CONFIRM_RETURN,
        4,
        90,
    )
    assert (entry.grant_id, entry.reservation_id, entry.revocation_id) == (
        str(GRANT_ID),
        str(uuid.UUID(int=2)),
        "",
    )
    assert response.next_page_token == "next"


async def test_get_and_extend_answer_the_reservation_its_grants_and_its_cap() -> None:
    ledger = RecordingLedger()
    servicer = CreditsServicer(ledger)  # type: ignore[arg-type]
    got = await servicer.GetReservation(
        pb.GetReservationRequest(account_id="acct", reservation_id="r"),
        NO_DEADLINE,
    )
    assert (got.reservation.confirmed_amount, got.reservation.returned_amount) == (6, 4)
    assert [(a.grant_id, a.amount, a.returned_amount) for a in got.allocations] == [
        (str(GRANT_ID), 10, 4)
    ]
    assert got.extendable_until.ToDatetime(datetime.UTC) == NOW + datetime.timedelta(days=7)
    extended = await servicer.ExtendReservation(
        pb.ExtendReservationRequest(
            account_id="acct", reservation_id="r", ttl=duration_pb2.Duration(seconds=-3)
        ),
        NO_DEADLINE,
    )
    assert ledger.commands[1:] == [commands.ExtendCommand("acct", "r", commands.WireTime(-3, 0))]
    assert extended.extendable_until == got.extendable_until
    absent = await servicer.ExtendReservation(
        pb.ExtendReservationRequest(account_id="acct", reservation_id="r"),
        NO_DEADLINE,
    )
    assert absent.reservation.reservation_id == str(uuid.UUID(int=2))
    assert ledger.commands[2:] == [commands.ExtendCommand("acct", "r", None)]
