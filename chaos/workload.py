"""Concurrent clients doing random Reserve (some priced by quantity), Confirm (some by
quantity, some above the hold, into the overdraft of the accounts that have one),
Release, ExtendReservation, Grant, Revoke, Transfer, GetBalance and GetUsageSummary on a
few shared accounts (so that they contend), through both instances; the ops caller
freezes some accounts now and then, for a few seconds, and some accounts have spend
limits (rolling, and per UTC day). ACCOUNT_FROZEN is an answer only for a call that
overlapped a freeze of its account, SPEND_LIMIT_EXCEEDED only on an account with a
limit; a new hold, overrun or outgoing transfer done while its account was surely frozen
is a violation. Some calls get
deadlines that cut them short; every call is retried with the same request (the same
idempotency key) until it is acknowledged or definitively refused, and every
acknowledgement goes into the log that chaos/checks.py holds against the database
afterwards."""

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
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
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
# Refund series state their totals as of a time (RevokeRequest.as_of) in this window, so
# that later, earlier and equal facts all occur.
FACTS_START = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)
FACT_SECONDS_MAX = 600
RESERVE_AMOUNT_MAX = 300
RESERVATION_TTL_SECONDS_MAX = 60
GRANT_EXPIRY_SECONDS_MAX = 120
# Every other account may go this far into debt by confirming above its holds.
OVERDRAFT_LIMIT = 500
# Every other account, the others, has a rolling spend limit of SPEND_LIMIT per
# SPEND_WINDOW_HOURS: a run's first minutes reach it.
SPEND_LIMIT = 20_000
SPEND_WINDOW_HOURS = 1
# One account in DAY_LIMITED_EVERY (of those with a rolling limit) also has a day limit,
# lower, so that it is the one that refuses first (and transfers count against it).
DAY_LIMITED_EVERY = 2
DAY_SPEND_LIMIT = 8_000
# One account in FREEZABLE_EVERY (counting from the second) is frozen now and then, for
# FROZEN_SECONDS_MIN to FROZEN_SECONDS_MAX, then unfrozen; the others never are.
FREEZABLE_EVERY = 3
FROZEN_SECONDS_MIN = 0.5
FROZEN_SECONDS_MAX = 3.0
# One Confirm in OVERRUN_SHARE asks for up to OVERRUN_EXTRA_MAX more than was held.
OVERRUN_SHARE = 0.2
OVERRUN_EXTRA_MAX = 200
TRANSFER_AMOUNT_MAX = 300
# A share of the Reserves is priced by quantity, of a job type priced once at the start
# of the run (Workload.set_price): each must hold quantity * PRICED_UNIT_PRICE.
PRICED_SHARE = 0.25
PRICED_UNIT_PRICE = 7
PRICED_QUANTITY_MAX = RESERVE_AMOUNT_MAX // PRICED_UNIT_PRICE
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
# violation. ACCOUNT_FROZEN and SPEND_LIMIT_EXCEEDED are further held to the account's
# state (Workload.settle): only where a freeze or a limit can have caused them.
EXPECTED_REFUSALS = {
    "Reserve": {"INSUFFICIENT_CREDITS", "SPEND_LIMIT_EXCEEDED", "ACCOUNT_FROZEN"},
    # An overrun beyond the available credits and the overdraft, past the spend limit, or
    # on a frozen account; a Confirm within its hold is never refused for either.
    "Confirm": {
        "RESERVATION_NOT_ACTIVE",
        "INSUFFICIENT_CREDITS",
        "SPEND_LIMIT_EXCEEDED",
        "ACCOUNT_FROZEN",
    },
    "UpdateAccountSettings": set(),
    "Release": {"RESERVATION_NOT_ACTIVE"},
    "ExtendReservation": {"RESERVATION_NOT_ACTIVE"},
    "Grant": set(),
    "Revoke": set(),
    "Transfer": {"INSUFFICIENT_CREDITS", "SPEND_LIMIT_EXCEEDED", "ACCOUNT_FROZEN"},
    "GetBalance": set(),
    "GetUsageSummary": set(),
}
# The calls a frozen account or a spend limit refuses (the Confirm only above its hold).
GUARDED = {"Reserve", "Confirm", "Transfer"}
# Who sends each keyed RPC (and replays it): Transfer is for operators only.
CALLER_OF = {"Grant": "gateway", "Reserve": "backend", "Revoke": "gateway", "Transfer": "ops"}
# GetUsageSummary's window either side of now: wider than any run.
USAGE_SUMMARY_WINDOW = datetime.timedelta(days=1)
OPERATIONS = (
    ("Reserve", 30),
    ("Confirm", 18),
    ("Release", 8),
    ("ExtendReservation", 4),
    ("Grant", 14),
    ("Revoke", 8),
    ("Transfer", 4),
    ("GetBalance", 10),
    ("GetUsageSummary", 2),
    ("replay", 8),
    ("Freeze", 2),
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
class FreezeLog:
    """When an account may have been frozen and when it surely was, as time.monotonic()
    intervals: maybe from sending a freeze until its unfreeze was acknowledged (inf while
    it is not), surely from the freeze's acknowledgement until the unfreeze was sent."""

    maybe: list[list[float]] = field(default_factory=list)
    surely: list[list[float]] = field(default_factory=list)

    def maybe_during(self, outcome: "Outcome") -> bool:
        return any(s <= outcome.ended and outcome.started <= e for s, e in self.maybe)

    def surely_during(self, outcome: "Outcome") -> bool:
        """Every attempt of the call was made while the account was frozen."""
        return any(s <= outcome.started and outcome.ended <= e for s, e in self.surely)


@dataclass
class Outcome:
    response: Any = None
    refusal: str | None = None  # "<CODE>/<REASON>"
    attempts: int = 0
    # time.monotonic() when the first attempt was sent and when the last one ended.
    started: float = 0.0
    ended: float = 0.0

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
        # The run's own job type, priced once by set_price.
        self.job_type = f"{run_id}-page"
        # reservation id -> the quantity it was priced for
        self.priced: dict[str, int] = {}
        # The accounts with a spend limit (configure), those the ops caller freezes now
        # and then (one freeze at a time each), and when each was frozen.
        self.limited: set[str] = set()
        self.freezable = accounts[1::FREEZABLE_EVERY]
        self.freeze_locks = {a: asyncio.Lock() for a in self.freezable}
        self.freezes: dict[str, FreezeLog] = {a: FreezeLog() for a in accounts}

    async def set_price(self, ops: CreditsServiceStub) -> None:
        """Prices the run's job type before the clients start; never changed after."""
        request = pb.SetPriceRequest(
            job_type=self.job_type, unit_price=PRICED_UNIT_PRICE, unit="page", reason="chaos"
        )
        await ops.SetPrice(request, timeout=CALL_TIMEOUT_SECONDS)

    def record(self, ack: Ack) -> None:
        self.acks.append(ack)
        self.log_file.write(json.dumps(asdict(ack)) + "\n")
        self.report.operations += 1

    def next_key(self, kind: str) -> str:
        self.sequence += 1
        return f"{self.run_id}-{kind}-{self.sequence}"

    async def call(self, rng: random.Random, caller: str, method: str, request: Any) -> Outcome:
        outcome = Outcome(started=time.monotonic())
        try:
            return await self._attempts(rng, caller, method, request, outcome)
        finally:
            outcome.ended = time.monotonic()

    async def _attempts(
        self, rng: random.Random, caller: str, method: str, request: Any, outcome: Outcome
    ) -> Outcome:
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

    def settle(
        self, method: str, account: str, key: str | None, outcome: Outcome, guarded: bool = False
    ) -> Ack:
        """`guarded`: the call is one a frozen account or a spend limit refuses (a new
        hold, an overrun, an outgoing transfer)."""
        if outcome.response is not None:
            text = "ok"
            if guarded and self.freezes[account].surely_during(outcome):
                self.report.violation(f"{method} on {account} done while it was frozen")
        elif outcome.refusal is not None:
            text = outcome.refusal
            reason = outcome.refusal.partition("/")[2]
            if reason not in EXPECTED_REFUSALS[method]:
                self.report.violation(f"{method} on {account} refused: {outcome.refusal}")
            elif reason == "ACCOUNT_FROZEN" and not (
                guarded and self.freezes[account].maybe_during(outcome)
            ):
                self.report.violation(f"{method} on {account} refused as frozen, not frozen then")
            elif reason == "SPEND_LIMIT_EXCEEDED" and not (guarded and account in self.limited):
                self.report.violation(f"{method} on {account} refused by a limit it has not")
        else:
            text = "unacknowledged"
            self.report.unacknowledged += 1
        return Ack(method, account, key, text, outcome.attempts)

    async def configure(self) -> None:
        """Gives every other account an overdraft and the others a rolling spend limit
        (some a day limit too), before the clients start."""
        rng = random.Random(f"{self.seed}-settings")
        for index, account in enumerate(self.accounts):
            if index % 2 == 0:
                settings = pb.AccountSettings(overdraft_limit=OVERDRAFT_LIMIT)
                paths = ["overdraft_limit"]
            else:
                settings = pb.AccountSettings(
                    spend_limit_rolling=SPEND_LIMIT, spend_limit_rolling_hours=SPEND_WINDOW_HOURS
                )
                paths = ["spend_limit_rolling", "spend_limit_rolling_hours"]
                if index // 2 % DAY_LIMITED_EVERY == 0:
                    settings.spend_limit_day = DAY_SPEND_LIMIT
                    paths.append("spend_limit_day")
                # Limited before the clients start: every call meets the limit.
                self.limited.add(account)
            request = pb.UpdateAccountSettingsRequest(
                account_id=account,
                settings=settings,
                update_mask=field_mask_pb2.FieldMask(paths=paths),
                reason="chaos",
            )
            outcome = await self.call(rng, "ops", "UpdateAccountSettings", request)
            self.record(self.settle("UpdateAccountSettings", account, None, outcome))

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
            elif op == "Transfer" and len(self.accounts) > 1:
                await self.transfer(rng, account)
            elif op == "replay" and self.keyed:
                await self.replay(rng)
            elif op == "GetUsageSummary":
                await self.usage_summary(rng, account)
            elif op == "Freeze" and self.freezable:
                await self.freeze_for_a_while(rng)
            else:
                await self.balance(rng, account)

    async def reserve(
        self, rng: random.Random, account: str, open_reservations: list[tuple[str, str, int]]
    ) -> None:
        key = self.next_key("reserve")
        request = pb.ReserveRequest(
            account_id=account,
            idempotency_key=key,
            ttl=duration_pb2.Duration(seconds=rng.randint(1, RESERVATION_TTL_SECONDS_MAX)),
            job_type="chaos",
        )
        if rng.random() < PRICED_SHARE:
            request.job_type = self.job_type
            request.quantity = rng.randint(1, PRICED_QUANTITY_MAX)
            amount = request.quantity * PRICED_UNIT_PRICE
        else:
            request.amount = amount = rng.randint(1, RESERVE_AMOUNT_MAX)
        outcome = await self.call(rng, "backend", "Reserve", request)
        ack = self.settle("Reserve", account, key, outcome, guarded=True)
        ack.result = {"amount": amount}
        if outcome.response is not None:
            r = outcome.response.reservation
            ack.result["reservation_id"] = r.reservation_id
            if request.quantity:
                self.priced[r.reservation_id] = request.quantity
                if (r.unit_price, r.quantity) != (PRICED_UNIT_PRICE, request.quantity):
                    self.report.violation(f"reservation {key} not priced as asked")
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
            quantity = self.priced.get(rid)
            if quantity is not None and rng.random() < 0.5:
                request.quantity = rng.randint(1, quantity)
            elif rng.random() < OVERRUN_SHARE:
                request.amount = amount + rng.randint(1, OVERRUN_EXTRA_MAX)
                request.allow_overrun = True
            elif rng.random() < 0.5:
                request.amount = rng.randint(1, amount)
        elif op == "Release":
            request = pb.ReleaseRequest(account_id=account, reservation_id=rid, reason="chaos")
        else:
            ttl = duration_pb2.Duration(seconds=rng.randint(1, RESERVATION_TTL_SECONDS_MAX))
            request = pb.ExtendReservationRequest(account_id=account, reservation_id=rid, ttl=ttl)
        outcome = await self.call(rng, "backend", op, request)
        overrun = op == "Confirm" and request.allow_overrun
        ack = self.settle(op, account, None, outcome, guarded=overrun)
        ack.result = {"reservation_id": rid}
        refused_overrun = outcome.refusal is not None and outcome.refusal.endswith(
            ("/INSUFFICIENT_CREDITS", "/SPEND_LIMIT_EXCEEDED", "/ACCOUNT_FROZEN")
        )
        # A refused overrun leaves the reservation active: it may be confirmed again.
        if op != "ExtendReservation" and outcome.acknowledged and not refused_overrun:
            open_reservations.remove((account, rid, amount))
        if outcome.response is not None:
            r = outcome.response.reservation
            ack.result |= {"status": r.status, "confirmed_amount": r.confirmed_amount}
            if op == "Confirm" and request.HasField("amount"):
                ack.result["asked"] = request.amount
            if op == "Confirm" and request.HasField("quantity"):
                ack.result["asked"] = request.quantity * PRICED_UNIT_PRICE
                if r.confirmed_amount != ack.result["asked"]:
                    self.report.violation(f"confirm of {rid} by quantity captured another amount")
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
        if series.startswith("refund") and rng.random() < 0.5:
            # A running total as of a Stripe event's time: later facts move the claim
            # down as well as up (a refund that failed), earlier ones change nothing.
            fact = FACTS_START + datetime.timedelta(seconds=rng.randint(0, FACT_SECONDS_MAX))
            request.as_of.CopyFrom(_stamp(fact))
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

    async def transfer(self, rng: random.Random, account: str) -> None:
        destination = rng.choice([a for a in self.accounts if a != account])
        key = self.next_key("transfer")
        request = pb.TransferRequest(
            from_account_id=account,
            to_account_id=destination,
            amount=rng.randint(1, TRANSFER_AMOUNT_MAX),
            idempotency_key=key,
            description="chaos",
        )
        outcome = await self.call(rng, CALLER_OF["Transfer"], "Transfer", request)
        ack = self.settle("Transfer", account, key, outcome, guarded=True)
        ack.result = {"amount": request.amount, "to": destination}
        if outcome.response is not None:
            t = outcome.response.transfer
            ack.result["transfer_id"] = t.transfer_id
            self.keyed.append(("Transfer", request, outcome.response))
        self.record(ack)

    async def freeze_for_a_while(self, rng: random.Random) -> None:
        """The ops caller freezes a freezable account, waits a little and unfreezes it
        (unless another client is doing so already)."""
        account = rng.choice(self.freezable)
        lock = self.freeze_locks[account]
        if lock.locked():
            return
        async with lock:
            log = self.freezes[account]
            maybe = [time.monotonic(), float("inf")]
            log.maybe.append(maybe)
            if await self.set_frozen(rng, account, True):
                surely = [time.monotonic(), float("inf")]
                log.surely.append(surely)
            else:
                surely = []
            await asyncio.sleep(rng.uniform(FROZEN_SECONDS_MIN, FROZEN_SECONDS_MAX))
            if surely:
                surely[1] = time.monotonic()
            if await self.set_frozen(rng, account, False):
                maybe[1] = time.monotonic()

    async def set_frozen(self, rng: random.Random, account: str, frozen: bool) -> bool:
        """Whether the change was acknowledged."""
        request = pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(frozen=frozen),
            update_mask=field_mask_pb2.FieldMask(paths=["frozen"]),
            reason="chaos",
        )
        outcome = await self.call(rng, "ops", "UpdateAccountSettings", request)
        ack = self.settle("UpdateAccountSettings", account, None, outcome)
        ack.result = {"frozen": frozen}
        if outcome.response is not None and outcome.response.account.settings.frozen != frozen:
            self.report.violation(f"{account} answered frozen={not frozen} after setting it")
        self.record(ack)
        return outcome.response is not None

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
        outcome = await self.call(rng, CALLER_OF[method], method, request)
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
        elif method == "Transfer":
            same = again.transfer == first.transfer
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
