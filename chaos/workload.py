"""Concurrent clients doing random Reserve, Confirm, Release, ExtendReservation, Grant,
Revoke, GetBalance and GetUsageSummary on a few shared accounts (so that they contend), through both
instances. Some calls get deadlines that cut them short; every call is retried with the
same request (the same idempotency key) until it is acknowledged or definitively
refused, and every acknowledgement goes into the log that chaos/checks.py holds against
the database afterwards."""

import asyncio
import datetime
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chaos.report import Report
from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub

CALL_TIMEOUT_SECONDS = 5.0
# One call in CUT_SHORT_SHARE gets a deadline of a few milliseconds: it may or may not
# have been done when the client gives up on it, which is what retries must survive.
CUT_SHORT_SHARE = 0.1
CUT_SHORT_SECONDS_MAX = 0.03
RETRY_DELAY_SECONDS_MIN = 0.02
RETRY_DELAY_SECONDS_MAX = 0.5
# A call not acknowledged within this time is logged as unacknowledged (its outcome is
# unknown); the checks allow it to have been done, once, or not at all.
ACKNOWLEDGE_SECONDS_MAX = 120.0
GRANT_AMOUNT_MAX = 1000
RESERVE_AMOUNT_MAX = 300
RESERVATION_TTL_SECONDS_MAX = 60
GRANT_EXPIRY_SECONDS_MAX = 120
# Answers that settle a call: anything else is retried (UNAVAILABLE, DEADLINE_EXCEEDED,
# RESOURCE_EXHAUSTED) or is unexpected (INTERNAL, UNKNOWN, …).
DEFINITIVE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Refusals the workload can meet with valid requests on shared accounts; any other is a
# violation.
EXPECTED_REFUSALS = {
    "Reserve": {"INSUFFICIENT_CREDITS"},
    "Confirm": {"RESERVATION_NOT_ACTIVE"},
    "Release": {"RESERVATION_NOT_ACTIVE"},
    "ExtendReservation": {"RESERVATION_NOT_ACTIVE"},
    "Grant": set(),
    "Revoke": set(),
    "GetBalance": set(),
    "GetUsageSummary": set(),
}
# GetUsageSummary's window either side of now: wider than any run.
USAGE_SUMMARY_WINDOW = datetime.timedelta(days=1)
OPERATIONS = (
    ("Reserve", 30),
    ("Confirm", 18),
    ("Release", 8),
    ("ExtendReservation", 4),
    ("Grant", 14),
    ("Revoke", 8),
    ("GetBalance", 10),
    ("GetUsageSummary", 2),
    ("replay", 8),
)


@dataclass
class Ack:
    """One acknowledged (or never acknowledged) operation of the log."""

    op: str
    account: str
    key: str | None
    outcome: str  # "ok", "<CODE>/<REASON>", or "unacknowledged"
    attempts: int
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    response: Any = None
    refusal: str | None = None  # "<CODE>/<REASON>"
    attempts: int = 0

    @property
    def acknowledged(self) -> bool:
        return self.response is not None or self.refusal is not None


def refusal_of(err: grpc.aio.AioRpcError) -> str:
    reason = ""
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return f"{err.code().name}/{reason}"


class Workload:
    def __init__(
        self,
        *,
        run_id: str,
        accounts: list[str],
        stubs: dict[str, list[CreditsServiceStub]],
        report: Report,
        log_path: Path,
        seed: int,
    ) -> None:
        self.run_id = run_id
        self.accounts = accounts
        self.stubs = stubs
        self.report = report
        self.log_file = log_path.open("a", encoding="utf-8")
        self.acks: list[Ack] = []
        self.seed = seed
        self.stopping = asyncio.Event()
        # (start, end) of every call that succeeded, for the Redis-down check.
        self.successes: list[tuple[float, float]] = []
        self.grants: dict[str, list[pb.Grant]] = {a: [] for a in accounts}
        self.keyed: list[tuple[str, Any, Any]] = []  # (method, request, response) acked ok
        self.sequence = 0

    def record(self, ack: Ack) -> None:
        self.acks.append(ack)
        self.log_file.write(json.dumps(asdict(ack)) + "\n")
        self.report.operations += 1

    def next_key(self, kind: str) -> str:
        self.sequence += 1
        return f"{self.run_id}-{kind}-{self.sequence}"

    async def call(self, rng: random.Random, caller: str, method: str, request: Any) -> Outcome:
        outcome = Outcome()
        give_up = time.monotonic() + ACKNOWLEDGE_SECONDS_MAX
        while time.monotonic() < give_up:
            outcome.attempts += 1
            stub = rng.choice(self.stubs[caller])
            rpc: Callable[..., Awaitable[Any]] = getattr(stub, method)
            timeout = CALL_TIMEOUT_SECONDS
            if rng.random() < CUT_SHORT_SHARE:
                timeout = rng.uniform(0.001, CUT_SHORT_SECONDS_MAX)
            started = time.monotonic()
            try:
                outcome.response = await rpc(request, timeout=timeout)
                self.successes.append((started, time.monotonic()))
                self.report.status(method, "OK")
                return outcome
            except grpc.aio.AioRpcError as err:
                self.report.status(method, err.code().name)
                if err.code() in DEFINITIVE:
                    outcome.refusal = refusal_of(err)
                    return outcome
                if err.code() not in RETRYABLE:
                    self.report.unexpected(f"workload {method}: {refusal_of(err)}")
                    return outcome
            await asyncio.sleep(rng.uniform(RETRY_DELAY_SECONDS_MIN, RETRY_DELAY_SECONDS_MAX))
        return outcome

    def settle(self, method: str, account: str, key: str | None, outcome: Outcome) -> Ack:
        if outcome.response is not None:
            text = "ok"
        elif outcome.refusal is not None:
            text = outcome.refusal
            if outcome.refusal.partition("/")[2] not in EXPECTED_REFUSALS[method]:
                self.report.violation(f"{method} on {account} refused: {outcome.refusal}")
        else:
            text = "unacknowledged"
            self.report.unacknowledged += 1
        return Ack(method, account, key, text, outcome.attempts)

    async def client(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        open_reservations: list[tuple[str, str, int]] = []
        names = [name for name, _ in OPERATIONS]
        weights = [weight for _, weight in OPERATIONS]
        while not self.stopping.is_set():
            account = rng.choice(self.accounts)
            op = rng.choices(names, weights)[0]
            if op == "Reserve":
                await self.reserve(rng, account, open_reservations)
            elif op in ("Confirm", "Release", "ExtendReservation") and open_reservations:
                await self.settle_reservation(rng, op, open_reservations)
            elif op == "Grant":
                await self.grant(rng, account)
            elif op == "Revoke" and self.grants[account]:
                await self.revoke(rng, account)
            elif op == "replay" and self.keyed:
                await self.replay(rng)
            elif op == "GetUsageSummary":
                await self.usage_summary(rng, account)
            else:
                await self.balance(rng, account)

    async def reserve(
        self, rng: random.Random, account: str, open_reservations: list[tuple[str, str, int]]
    ) -> None:
        key = self.next_key("reserve")
        request = pb.ReserveRequest(
            account_id=account,
            amount=rng.randint(1, RESERVE_AMOUNT_MAX),
            idempotency_key=key,
            ttl=duration_pb2.Duration(seconds=rng.randint(1, RESERVATION_TTL_SECONDS_MAX)),
            job_type="chaos",
        )
        outcome = await self.call(rng, "backend", "Reserve", request)
        ack = self.settle("Reserve", account, key, outcome)
        ack.result = {"amount": request.amount}
        if outcome.response is not None:
            r = outcome.response.reservation
            ack.result["reservation_id"] = r.reservation_id
            open_reservations.append((account, r.reservation_id, r.amount))
            self.keyed.append(("Reserve", request, outcome.response))
        self.record(ack)

    async def settle_reservation(
        self, rng: random.Random, op: str, open_reservations: list[tuple[str, str, int]]
    ) -> None:
        account, rid, amount = open_reservations[rng.randrange(len(open_reservations))]
        request: Any
        if op == "Confirm":
            request = pb.ConfirmRequest(account_id=account, reservation_id=rid)
            if rng.random() < 0.5:
                request.amount = rng.randint(1, amount)
        elif op == "Release":
            request = pb.ReleaseRequest(account_id=account, reservation_id=rid, reason="chaos")
        else:
            ttl = duration_pb2.Duration(seconds=rng.randint(1, RESERVATION_TTL_SECONDS_MAX))
            request = pb.ExtendReservationRequest(account_id=account, reservation_id=rid, ttl=ttl)
        outcome = await self.call(rng, "backend", op, request)
        ack = self.settle(op, account, None, outcome)
        ack.result = {"reservation_id": rid}
        if op != "ExtendReservation" and outcome.acknowledged:
            open_reservations.remove((account, rid, amount))
        if outcome.response is not None:
            r = outcome.response.reservation
            ack.result |= {"status": r.status, "confirmed_amount": r.confirmed_amount}
            if op == "Confirm" and request.HasField("amount"):
                ack.result["asked"] = request.amount
        self.record(ack)

    async def grant(self, rng: random.Random, account: str) -> None:
        key = self.next_key("grant")
        request = pb.GrantRequest(
            account_id=account,
            amount=rng.randint(1, GRANT_AMOUNT_MAX),
            source=rng.choice([pb.GRANT_SOURCE_PURCHASE, pb.GRANT_SOURCE_PROMOTION]),
            idempotency_key=key,
            priority=rng.randint(-1, 1),
        )
        if rng.random() < 0.5:
            request.external_ref = f"{key}-ref"
        if rng.random() < 0.3:
            seconds = rng.randint(5, GRANT_EXPIRY_SECONDS_MAX)
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
            request.expires_at.CopyFrom(_stamp(expires))
        outcome = await self.call(rng, "gateway", "Grant", request)
        ack = self.settle("Grant", account, key, outcome)
        ack.result = {"amount": request.amount}
        if outcome.response is not None:
            g = outcome.response.grant
            ack.result["grant_id"] = g.grant_id
            self.grants[account].append(g)
            self.keyed.append(("Grant", request, outcome.response))
        self.record(ack)

    async def revoke(self, rng: random.Random, account: str) -> None:
        g = rng.choice(self.grants[account])
        key = self.next_key("revoke")
        series = rng.choice(["", f"refund:{g.grant_id}", f"dispute:{g.grant_id}"])
        withdraw = series.startswith("dispute") and rng.random() < 0.3
        request = pb.RevokeRequest(
            account_id=account,
            idempotency_key=key,
            cumulative_series=series,
            withdraw=withdraw,
            amount=0
            if withdraw or series.startswith("dispute")
            else rng.randint(0, g.original_amount),
            reason="chaos",
        )
        if g.external_ref and rng.random() < 0.5:
            request.external_ref = g.external_ref
            if rng.random() < 0.5:
                request.account_id = ""
        else:
            request.grant_id = g.grant_id
        outcome = await self.call(rng, "gateway", "Revoke", request)
        ack = self.settle("Revoke", account, key, outcome)
        if outcome.response is not None:
            r = outcome.response
            ack.result = {
                "grant_id": r.grant.grant_id,
                "revoked": r.revoked_amount,
                "unrecovered": r.unrecovered_amount,
                "restored": r.restored_amount,
                "cancelled": r.cancelled_amount,
            }
            self.keyed.append(("Revoke", request, r))
        self.record(ack)

    async def balance(self, rng: random.Random, account: str) -> None:
        request = pb.GetBalanceRequest(account_id=account)
        outcome = await self.call(rng, "backend", "GetBalance", request)
        ack = self.settle("GetBalance", account, None, outcome)
        if outcome.response is not None:
            b = outcome.response
            ack.result = {"available": b.available, "reserved": b.reserved}
            if b.available < 0 or b.reserved < 0:
                self.report.violation(f"negative balance of {account}: {ack.result}")
        self.record(ack)

    async def usage_summary(self, rng: random.Random, account: str) -> None:
        """The account's finished reservations of the last day: counts that add up."""
        now = datetime.datetime.now(datetime.UTC)
        request = pb.GetUsageSummaryRequest(
            account_id=account,
            since=_stamp(now - USAGE_SUMMARY_WINDOW),
            until=_stamp(now + USAGE_SUMMARY_WINDOW),
        )
        outcome = await self.call(rng, "ops", "GetUsageSummary", request)
        ack = self.settle("GetUsageSummary", account, None, outcome)
        for u in outcome.response.job_types if outcome.response is not None else ():
            finished = u.confirmed + u.released + u.expired
            counts = (u.confirmed, u.released, u.expired, u.captured_amount)
            if min(counts) < 0 or finished == 0:
                self.report.violation(f"usage summary of {account}: counts {counts}")
            elif u.success_per_mille != u.confirmed * 1000 // finished:
                self.report.violation(f"usage summary of {account}: rate {u.success_per_mille}")
        self.record(ack)

    async def replay(self, rng: random.Random) -> None:
        """An acknowledged request sent again: the same answer, nothing new."""
        method, request, first = rng.choice(self.keyed)
        caller = "backend" if method == "Reserve" else "gateway"
        outcome = await self.call(rng, caller, method, request)
        self.report.replays += 1
        if outcome.response is None:
            if outcome.refusal is not None:
                self.report.violation(f"replay of {method} refused: {outcome.refusal}")
            return
        again = outcome.response
        if method == "Reserve":
            same = again.reservation.reservation_id == first.reservation.reservation_id
        elif method == "Grant":
            same = again.grant.grant_id == first.grant.grant_id
        else:
            same = (again.grant.grant_id, again.revoked_amount, again.unrecovered_amount) == (
                first.grant.grant_id,
                first.revoked_amount,
                first.unrecovered_amount,
            ) and (again.restored_amount, again.cancelled_amount) == (
                first.restored_amount,
                first.cancelled_amount,
            )
        if not same:
            self.report.violation(
                f"replay of {method} {request.idempotency_key} answered differently"
            )

    def close(self) -> None:
        self.log_file.close()


def _stamp(moment: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def new_run_id() -> str:
    return f"chaos-{uuid.uuid4().hex[:8]}"
