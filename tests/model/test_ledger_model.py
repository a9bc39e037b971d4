"""Model-based test: random sequences of Grant, Reserve, Confirm (above the hold too),
Release, ExtendReservation, Revoke, Transfer, GetBalance, UpdateAccountSettings (overdraft,
spend limits per UTC day, UTC month and rolling hour, freezing and unfreezing), SetPrice
(with Reserves and Confirms by quantity), replays and the passage of time (steps, and
jumps past the next UTC midnight; a run may start on the last evening of a month, so
that its first jump starts a new month too), run against the
real server (the suite's production server and its movable clock) and against the
pure-Python model in tests/model/rules.py. Every answer must agree — status, reason,
amounts, balances — and after every step the stored grants, reservations and the
allocations (which grants each reservation drew from, and what went back to each) must
equal the model's.

Time moves in steps of TIME_STEP_SECONDS and every expiry is a whole number of steps
away, so the few milliseconds that pass between the model's reading of the clock and
the server's never decide an expiry differently. The same holds for the spend periods:
a jump lands JUMP_PAST_MIDNIGHT after a UTC midnight, longer than the rolling window, and
a sequence's steps never bring it near the next midnight (or past the window) again.

`MODEL_TEST_PROFILE=long` runs many more and longer sequences than `make test` does."""

import asyncio
import datetime
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, message, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.ledger import limits
from service.settings import RESERVATION_LIFETIME_MAX_SECONDS_DEFAULT
from tests.model import rules
from tests.support import CALL_TIMEOUT_SECONDS, MovableClock, error_details, new_id

TIME_STEP_SECONDS = 10
# The time of the first fact a series' revocation states (RevokeRequest.as_of).
FACTS_START = datetime.datetime(2026, 11, 23, 3, 14, tzinfo=datetime.UTC)
# The server stamps a reservation's expiry with its own reading of the clock, a little
# after the model's; far less than a time step.
CLOCK_READING_SLACK = datetime.timedelta(seconds=1)
# Every reservation of one run finished within this of its end (a run is minutes of
# clock and at most DAY_JUMPS_MAX days; this also stays under the events' 30-day
# retention, so the hourly retention sweep never finds a run's own events old).
USAGE_SUMMARY_LOOKBACK = datetime.timedelta(days=30)
DAY_JUMPS_MAX = 3
# Where a jump lands after a UTC midnight (a day's or a month's start): longer than the
# rolling window, so every spend before a jump has left it, and far enough from the next
# midnight that no sequence's steps (at most 80 of at most 3 time steps: 40 minutes)
# reach it.
JUMP_PAST_MIDNIGHT = datetime.timedelta(hours=2)
# A run starts at least this long before the next UTC midnight (else it jumps past it
# first): longer than a sequence's steps.
MIDNIGHT_CLEARANCE = datetime.timedelta(hours=1)
# A run that starts at a month's end starts this long before its last midnight.
MONTH_END_BEFORE_MIDNIGHT = datetime.timedelta(hours=4)
PROFILES = {
    # About 20 s in `make test` on two cores.
    "default": settings(
        max_examples=60,
        stateful_step_count=50,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    ),
    "long": settings(
        max_examples=500,
        stateful_step_count=80,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    ),
}
PROFILE_NAME = os.environ.get("MODEL_TEST_PROFILE", "default")
PROFILE = PROFILES[PROFILE_NAME]
# The long profile runs for many minutes, past the suite's per-test timeout.
TIMEOUT_SECONDS = {"default": 300, "long": 3600}[PROFILE_NAME]
T = TypeVar("T")
Keyed = pb.GrantRequest | pb.ReserveRequest | pb.RevokeRequest | pb.TransferRequest

amounts = st.integers(min_value=1, max_value=100)
picks = st.integers(min_value=0, max_value=1000)
steps = st.integers(min_value=1, max_value=4)
# The rolling spend window: longer than a sequence's steps, shorter than any jump, so a
# spend leaves it exactly when a jump passes, never within milliseconds of a reading.
SPEND_WINDOW_HOURS = 1
# The spend limits a run sets: none (often), below one Reserve's or Transfer's largest
# amount, or roomy.
spend_limits = st.sampled_from([0, 0, 40, 120, 400])


@dataclass
class Env:
    loop: asyncio.AbstractEventLoop
    ops: Stub
    clock: MovableClock
    admin: AsyncEngine

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    async def rpc(self, method: str, request: message.Message) -> Any:
        # The call is made inside the loop: grpc.aio binds a call to the running loop, and
        # outside it to the thread's current loop, which an earlier test may have unset.
        rpc: Callable[..., Awaitable[Any]] = getattr(self.ops, method)
        return await rpc(request, timeout=CALL_TIMEOUT_SECONDS)


def stamp(moment: datetime.datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(moment)
    return t


def moment(t: timestamp_pb2.Timestamp) -> datetime.datetime:
    return t.ToDatetime(datetime.UTC)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env
        self.model = rules.Model()
        self.prefix = new_id("model")
        self.accounts = [f"{self.prefix}-a", f"{self.prefix}-b"]
        # Job types of this run only: the price list is global.
        self.job_types = [f"{self.prefix}-story", f"{self.prefix}-page"]
        self.keys = 0
        self.grants: list[str] = []
        self.reservations: list[str] = []
        # Keyed requests sent so far, to send again (a replay) or to reuse their keys.
        self.sent: list[tuple[str, Keyed]] = []
        self.day_jumps = 0
        # The latest fact (seconds after FACTS_START) a restated series has told.
        self.latest_fact = 0

    @initialize(day=spend_limits, month=spend_limits, credits=st.integers(50, 300))
    def start_with_limits(self, day: int, month: int, credits: int) -> None:
        """The first account starts with credits and (more often than not) day and month
        limits: its spend meets the limits' periods and the clock's jumps in more runs
        than later steps alone would make it."""
        self.limits(0, overdraft=0, day=day, month=month, rolling=0)
        self.grant(which=0, amount=credits, source=1, priority=0, expiry_steps=None, ref=None)

    # One run in four: each moves the session's clock up to a month ahead.
    @initialize(at_month_end=st.sampled_from([False, False, False, True]))
    def start(self, at_month_end: bool) -> None:
        """Away from midnight; or on a month's last evening, so the first jump past
        midnight starts a new month as well as a new day. Where the clock stands decides
        no draw: the rules' preconditions count, they never read the calendar."""
        now = self.env.clock()
        if at_month_end:
            evening = next_month(now) - MONTH_END_BEFORE_MIDNIGHT
            if evening < now:
                evening = next_month(next_month(now)) - MONTH_END_BEFORE_MIDNIGHT
            self.env.clock.advance((evening - now).total_seconds())
        elif next_midnight(now) - now < MIDNIGHT_CLEARANCE:
            self.jump_to(next_midnight(now))

    # -- plumbing -------------------------------------------------------------------

    def key(self) -> str:
        self.keys += 1
        return f"{self.prefix}-k{self.keys}"

    def call(self, method: str, request: message.Message) -> Any:
        """The server's answer: a response message or a rules.Refused."""
        try:
            return self.env.run(self.env.rpc(method, request))
        except grpc.aio.AioRpcError as err:
            reason, _ = error_details(err)
            return rules.Refused(err.code().name, reason, _limit_named(err))

    def jump_to(self, midnight: datetime.datetime) -> None:
        """The clock moves to JUMP_PAST_MIDNIGHT after `midnight`."""
        self.env.clock.advance((midnight + JUMP_PAST_MIDNIGHT - self.env.clock()).total_seconds())

    def expect(self, answer: Any, run_model: Callable[[str], Any]) -> Any:
        """Runs the model with the id the server gave (if any); both must succeed or
        both refuse with the same code and reason. Returns the model's result."""
        new = _new_id_of(answer)
        refused: rules.Refused | None = None
        predicted = None
        try:
            predicted = run_model(new)
        except rules.Refused as exc:
            refused = exc
        if refused is not None:
            assert isinstance(answer, rules.Refused), f"server did it, model refused {refused}"
            assert (answer.code, answer.reason, answer.limit) == (
                refused.code,
                refused.reason,
                refused.limit,
            )
            return None
        assert not isinstance(answer, rules.Refused), (
            f"server refused {answer.code}/{answer.reason}, model did it: {predicted}"
        )
        return predicted

    def check_grant(self, got: pb.Grant, want: rules.Grant) -> None:
        assert got.grant_id == want.grant_id
        assert got.account_id == want.account
        assert (got.original_amount, got.remaining_amount, got.revoked_amount) == (
            want.original,
            want.remaining,
            want.revoked,
        )
        assert (got.source, got.priority) == (want.source, want.priority)
        assert got.external_ref == (want.external_ref or "")
        expires = moment(got.expires_at) if got.HasField("expires_at") else None
        assert expires == want.expires_at

    def check_reservation(self, got: pb.Reservation, want: rules.Reservation) -> None:
        assert got.reservation_id == want.reservation_id
        assert got.account_id == want.account
        assert (got.amount, got.confirmed_amount, got.status, got.overrun_amount) == (
            want.amount,
            want.confirmed,
            want.status,
            want.overrun,
        )
        assert abs(moment(got.expires_at) - want.expires_at) < CLOCK_READING_SLACK
        assert (got.price_version, got.unit_price, got.quantity) == (want.priced or (0, 0, 0))

    def send_keyed(self, method: str, request: Keyed) -> None:
        self.sent.append((method, request))
        self.dispatch(method, request)

    def dispatch(self, method: str, request: Keyed) -> None:
        if isinstance(request, pb.GrantRequest):
            self.do_grant(request)
        elif isinstance(request, pb.ReserveRequest):
            self.do_reserve(request)
        elif isinstance(request, pb.RevokeRequest):
            self.do_revoke(request)
        elif isinstance(request, pb.TransferRequest):
            self.do_transfer(request)
        else:
            raise AssertionError(f"not a keyed request: {method}")

    # -- operations -----------------------------------------------------------------

    def do_grant(self, request: pb.GrantRequest) -> None:
        now = self.env.clock()
        answer = self.call("Grant", request)
        want = self.expect(
            answer,
            lambda new: self.model.grant(
                request.account_id,
                request.amount,
                request.source,
                request.idempotency_key,
                ("Grant", request.SerializeToString(deterministic=True)),
                expires_at=moment(request.expires_at) if request.HasField("expires_at") else None,
                priority=request.priority,
                external_ref=request.external_ref or None,
                now=now,
                new_id=new,
            ),
        )
        if want is not None:
            self.check_grant(answer.grant, want)
            if want.grant_id not in self.grants:
                self.grants.append(want.grant_id)

    def do_reserve(self, request: pb.ReserveRequest) -> None:
        now = self.env.clock()
        answer = self.call("Reserve", request)
        want = self.expect(
            answer,
            lambda new: self.model.reserve(
                request.account_id,
                request.amount,
                request.ttl.ToTimedelta()
                if request.HasField("ttl")
                else limits.RESERVATION_TTL_DEFAULT,
                request.idempotency_key,
                ("Reserve", request.SerializeToString(deterministic=True)),
                now=now,
                new_id=new,
                job_type=request.job_type,
                quantity=request.quantity or None,
            ),
        )
        if want is not None:
            self.check_reservation(answer.reservation, want)
            if want.reservation_id not in self.reservations:
                self.reservations.append(want.reservation_id)

    def do_revoke(self, request: pb.RevokeRequest) -> None:
        now = self.env.clock()
        target_kind = request.WhichOneof("target")
        assert target_kind is not None
        answer = self.call("Revoke", request)
        want = self.expect(
            answer,
            lambda _: self.model.revoke(
                request.account_id,
                (target_kind, getattr(request, target_kind)),
                request.amount,
                series=request.cumulative_series or None,
                withdraw=request.withdraw,
                key=request.idempotency_key,
                request=("Revoke", request.SerializeToString(deterministic=True)),
                now=now,
                new_id=str(uuid.uuid4()),
                as_of=moment(request.as_of) if request.HasField("as_of") else None,
            ),
        )
        if want is not None:
            self.check_grant(answer.grant, want.grant)
            got = (
                answer.revoked_amount,
                answer.unrecovered_amount,
                answer.restored_amount,
                answer.cancelled_amount,
            )
            assert got == (want.revoked, want.unrecovered, want.restored, want.cancelled)

    def do_transfer(self, request: pb.TransferRequest) -> None:
        now = self.env.clock()
        answer = self.call("Transfer", request)
        made = (
            []
            if isinstance(answer, rules.Refused)
            else [lot.destination_grant_id for lot in answer.transfer.lots]
        )
        want = self.expect(
            answer,
            lambda new: self.model.transfer(
                request.from_account_id,
                request.to_account_id,
                request.amount,
                request.idempotency_key,
                ("Transfer", request.SerializeToString(deterministic=True)),
                now=now,
                new_id=new,
                destination_ids=made,
            ),
        )
        if want is not None:
            got = answer.transfer
            assert (got.transfer_id, got.from_account_id, got.to_account_id, got.amount) == (
                want.transfer_id,
                want.source,
                want.destination,
                want.amount,
            )
            assert [
                (lot.source_grant_id, lot.destination_grant_id, lot.amount) for lot in got.lots
            ] == [(lot.source_grant_id, lot.destination_grant_id, lot.amount) for lot in want.lots]
            for lot in got.lots:
                source = self.model.state.grants[lot.source_grant_id]
                expires = moment(lot.expires_at) if lot.HasField("expires_at") else None
                assert (expires, lot.priority) == (source.expires_at, source.priority)
                if lot.destination_grant_id not in self.grants:
                    self.grants.append(lot.destination_grant_id)

    # -- rules ----------------------------------------------------------------------

    @rule(
        which=st.integers(0, 1),
        amount=amounts,
        source=st.sampled_from([1, 1, 1, 2, 3, 4]),
        priority=st.integers(-1, 1),
        expiry_steps=st.none() | steps,
        ref=st.none() | st.integers(0, 3),
    )
    def grant(
        self,
        *,
        which: int,
        amount: int,
        source: int,
        priority: int,
        expiry_steps: int | None,
        ref: int | None,
    ) -> None:
        request = pb.GrantRequest(
            account_id=self.accounts[which],
            amount=amount,
            source=source,  # type: ignore[arg-type]
            idempotency_key=self.key(),
            priority=priority,
            external_ref="" if ref is None else f"{self.prefix}-ref{ref}",
        )
        if expiry_steps is not None:
            later = datetime.timedelta(seconds=expiry_steps * TIME_STEP_SECONDS)
            request.expires_at.CopyFrom(stamp(self.env.clock() + later))
        self.send_keyed("Grant", request)

    @rule(which=st.integers(0, 1), amount=st.integers(1, 150), ttl_steps=steps)
    def reserve(self, which: int, amount: int, ttl_steps: int) -> None:
        request = pb.ReserveRequest(
            account_id=self.accounts[which],
            amount=amount,
            idempotency_key=self.key(),
            ttl=duration_pb2.Duration(seconds=ttl_steps * TIME_STEP_SECONDS),
        )
        self.send_keyed("Reserve", request)

    @rule(which=st.integers(0, 1), amount=st.integers(1, 150))
    def transfer(self, which: int, amount: int) -> None:
        request = pb.TransferRequest(
            from_account_id=self.accounts[which],
            to_account_id=self.accounts[1 - which],
            amount=amount,
            idempotency_key=self.key(),
            description="model",
        )
        self.send_keyed("Transfer", request)

    @rule(
        which=st.integers(0, 1),
        quantity=st.integers(1, 12),
        ttl_steps=steps,
    )
    def reserve_priced(self, which: int, quantity: int, ttl_steps: int) -> None:
        request = pb.ReserveRequest(
            account_id=self.accounts[which % 2],
            job_type=self.job_types[which],
            quantity=quantity,
            idempotency_key=self.key(),
            ttl=duration_pb2.Duration(seconds=ttl_steps * TIME_STEP_SECONDS),
        )
        self.send_keyed("Reserve", request)

    @rule(
        which=st.integers(0, 1),
        # Mostly prices, sometimes a retirement.
        unit_price=st.integers(1, 15) | st.none(),
        effective_steps=st.integers(0, 2),
    )
    def set_price(self, which: int, unit_price: int | None, effective_steps: int) -> None:
        """A new price (None: retired), now or a whole number of time steps ahead."""
        job_type = self.job_types[which]
        request = pb.SetPriceRequest(
            job_type=job_type,
            unit_price=unit_price or 0,
            unit="" if unit_price is None else "unit",
            retire=unit_price is None,
        )
        if effective_steps:
            later = datetime.timedelta(seconds=effective_steps * TIME_STEP_SECONDS)
            request.effective_at.CopyFrom(stamp(self.env.clock() + later))
        answer = self.call("SetPrice", request)
        assert isinstance(answer, pb.SetPriceResponse), answer
        price = answer.price
        assert (price.unit_price, price.retired) == (unit_price or 0, unit_price is None)
        self.model.set_price(
            job_type,
            rules.PriceVersion(price.version, unit_price, moment(price.effective_at)),
        )

    @precondition(lambda self: self.reservations)
    @rule(
        pick=picks,
        amount=st.none() | st.integers(1, 110),
        quantity=st.none() | st.integers(1, 12),
        elsewhere=st.booleans(),
        overrun=st.booleans(),
    )
    def confirm(
        self, pick: int, amount: int | None, quantity: int | None, elsewhere: bool, overrun: bool
    ) -> None:
        rid = self.reservations[pick % len(self.reservations)]
        account = self.owner_or_other(self.model.state.reservations[rid].account, elsewhere)
        # By quantity instead of amount, when drawn (amount and quantity together are a
        # bad request, which validation tests cover).
        if quantity is not None:
            amount = None
        request = pb.ConfirmRequest(
            account_id=account,
            reservation_id=rid,
            amount=amount,
            quantity=quantity,
            allow_overrun=overrun,
        )
        now = self.env.clock()
        answer = self.call("Confirm", request)
        want = self.expect(
            answer,
            lambda _: self.model.confirm(
                account, rid, amount, now, allow_overrun=overrun, quantity=quantity
            ),
        )
        if want is not None:
            self.check_reservation(answer.reservation, want)

    def priced_reservations(self) -> list[str]:
        return [rid for rid in self.reservations if self.model.state.reservations[rid].priced]

    @precondition(lambda self: self.priced_reservations())
    @rule(pick=picks, quantity=st.integers(1, 12))
    def confirm_by_quantity(self, pick: int, quantity: int) -> None:
        """A priced reservation's final quantity, at the unit price it stored."""
        priced = self.priced_reservations()
        rid = priced[pick % len(priced)]
        account = self.model.state.reservations[rid].account
        request = pb.ConfirmRequest(account_id=account, reservation_id=rid, quantity=quantity)
        now = self.env.clock()
        answer = self.call("Confirm", request)
        want = self.expect(
            answer, lambda _: self.model.confirm(account, rid, None, now, quantity=quantity)
        )
        if want is not None:
            self.check_reservation(answer.reservation, want)

    @precondition(lambda self: self.reservations)
    @rule(pick=picks, elsewhere=st.booleans())
    def release(self, pick: int, elsewhere: bool) -> None:
        rid = self.reservations[pick % len(self.reservations)]
        account = self.owner_or_other(self.model.state.reservations[rid].account, elsewhere)
        request = pb.ReleaseRequest(account_id=account, reservation_id=rid, reason="model")
        now = self.env.clock()
        answer = self.call("Release", request)
        want = self.expect(answer, lambda _: self.model.release(account, rid, now))
        if want is not None:
            self.check_reservation(answer.reservation, want)

    @precondition(lambda self: self.reservations)
    @rule(pick=picks, ttl_steps=steps, elsewhere=st.booleans())
    def extend(self, pick: int, ttl_steps: int, elsewhere: bool) -> None:
        rid = self.reservations[pick % len(self.reservations)]
        account = self.owner_or_other(self.model.state.reservations[rid].account, elsewhere)
        ttl = datetime.timedelta(seconds=ttl_steps * TIME_STEP_SECONDS)
        request = pb.ExtendReservationRequest(
            account_id=account,
            reservation_id=rid,
            ttl=duration_pb2.Duration(seconds=int(ttl.total_seconds())),
        )
        lifetime_max = datetime.timedelta(seconds=RESERVATION_LIFETIME_MAX_SECONDS_DEFAULT)
        now = self.env.clock()
        answer = self.call("ExtendReservation", request)
        want = self.expect(
            answer, lambda _: self.model.extend(account, rid, ttl, lifetime_max, now)
        )
        if want is not None:
            self.check_reservation(answer.reservation, want)

    def active(self) -> list[str]:
        now = self.env.clock()
        return [
            r.reservation_id
            for r in self.model.state.reservations.values()
            if r.status == rules.RESERVED and r.expires_at > now
        ]

    @precondition(lambda self: self.active())
    @rule(pick=picks, extra=st.integers(1, 80))
    def confirm_above_the_hold(self, pick: int, extra: int) -> None:
        """An overrun of an active reservation: from the available credits, then debt."""
        active = self.active()
        self.overrun(active[pick % len(active)], extra)

    @rule(which=st.integers(0, 1), amount=st.integers(1, 60))
    def job(self, which: int, amount: int) -> None:
        """A job that costs what it held: Reserve, then at once a Confirm of the hold
        (when the Reserve was taken); its spend stays in its periods."""
        before = len(self.reservations)
        self.reserve(which, amount, ttl_steps=4)
        if len(self.reservations) > before:
            rid = self.reservations[-1]
            account = self.accounts[which]
            request = pb.ConfirmRequest(account_id=account, reservation_id=rid)
            now = self.env.clock()
            answer = self.call("Confirm", request)
            want = self.expect(answer, lambda _: self.model.confirm(account, rid, None, now))
            if want is not None:
                self.check_reservation(answer.reservation, want)

    @rule(which=st.integers(0, 1), amount=st.integers(1, 20), extra=st.integers(1, 150))
    def job_above_the_hold(self, which: int, amount: int, extra: int) -> None:
        """A small job whose final cost exceeds its hold: Reserve, then at once an
        overrun (when the Reserve was taken)."""
        before = len(self.reservations)
        self.reserve(which, amount, ttl_steps=4)
        if len(self.reservations) > before:
            self.overrun(self.reservations[-1], extra)

    def overrun(self, rid: str, extra: int) -> None:
        r = self.model.state.reservations[rid]
        account, amount = r.account, r.amount + extra
        request = pb.ConfirmRequest(
            account_id=account, reservation_id=rid, amount=amount, allow_overrun=True
        )
        now = self.env.clock()
        answer = self.call("Confirm", request)
        want = self.expect(
            answer, lambda _: self.model.confirm(account, rid, amount, now, allow_overrun=True)
        )
        if want is not None:
            self.check_reservation(answer.reservation, want)

    @rule(
        which=st.integers(0, 1),
        overdraft=st.sampled_from([0, 30, 100, 100]),
        day=spend_limits,
        month=spend_limits,
        rolling=spend_limits,
    )
    def limits(self, which: int, overdraft: int, day: int, month: int, rolling: int) -> None:
        account = self.accounts[which]
        hours = SPEND_WINDOW_HOURS if rolling else 0
        request = pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(
                overdraft_limit=overdraft,
                spend_limit_day=day,
                spend_limit_month=month,
                spend_limit_rolling=rolling,
                spend_limit_rolling_hours=hours,
            ),
            update_mask=field_mask_pb2.FieldMask(
                paths=[
                    "overdraft_limit",
                    "spend_limit_day",
                    "spend_limit_month",
                    "spend_limit_rolling",
                    "spend_limit_rolling_hours",
                ]
            ),
            reason="model",
        )
        limits = rules.SpendLimits(day, month, rolling, hours)
        now = self.env.clock()
        answer = self.call("UpdateAccountSettings", request)
        self.expect(answer, lambda _: self.model.update_limits(account, overdraft, limits, now))
        assert answer.account.settings.overdraft_limit == overdraft
        self.check_spend_use(account)

    def check_spend_use(self, account: str) -> None:
        """GetAccount names each limit that is set, in order, with the model's use."""
        now = self.env.clock()
        answer = self.call("GetAccount", pb.GetAccountRequest(account_id=account))
        want = self.model.spend_use(account, now)
        assert [(u.limit, u.limit_amount, u.used) for u in answer.account.spend_limits] == want

    @rule(which=st.integers(0, 1), frozen=st.booleans())
    def freeze(self, which: int, frozen: bool) -> None:
        """Ops freezes or unfreezes an account."""
        account = self.accounts[which]
        request = pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(frozen=frozen),
            update_mask=field_mask_pb2.FieldMask(paths=["frozen"]),
            reason="model",
        )
        now = self.env.clock()
        answer = self.call("UpdateAccountSettings", request)
        self.expect(answer, lambda _: self.model.set_frozen(account, frozen, now))
        assert answer.account.settings.frozen == frozen

    @rule(which=st.integers(0, 1))
    def spend_use(self, which: int) -> None:
        self.check_spend_use(self.accounts[which])

    @rule(which=st.integers(0, 1), amount=st.none() | st.integers(1, 110))
    def confirm_unknown(self, which: int, amount: int | None) -> None:
        rid = str(uuid.uuid4())
        request = pb.ConfirmRequest(account_id=self.accounts[which], reservation_id=rid)
        if amount is not None:
            request.amount = amount
        now = self.env.clock()
        answer = self.call("Confirm", request)
        self.expect(answer, lambda _: self.model.confirm(self.accounts[which], rid, amount, now))

    @precondition(lambda self: self.grants)
    @rule(
        pick=picks,
        amount=st.sampled_from([0, 0, 1, 5, 20, 50, 80, 120]),
        series=st.none() | st.integers(0, 2),
        withdraw=st.booleans(),
        by_ref=st.booleans(),
        name_account=st.booleans(),
        elsewhere=st.booleans(),
        fact_second=st.none() | st.integers(0, 3),
    )
    def revoke(
        self,
        *,
        pick: int,
        amount: int,
        series: int | None,
        withdraw: bool,
        fact_second: int | None,
        by_ref: bool,
        name_account: bool,
        elsewhere: bool,
    ) -> None:
        g = self.model.state.grants[self.grants[pick % len(self.grants)]]
        withdraw = withdraw and series is not None
        request = pb.RevokeRequest(
            account_id=self.owner_or_other(g.account, elsewhere),
            amount=0 if withdraw else amount,
            idempotency_key=self.key(),
            reason="model",
            cumulative_series="" if series is None else f"{self.prefix}-s{series}",
            withdraw=withdraw,
        )
        if series is not None and fact_second is not None:
            # A few whole seconds apart, so that later, earlier and equal facts all occur.
            request.as_of.CopyFrom(stamp(FACTS_START + datetime.timedelta(seconds=fact_second)))
        if by_ref and g.external_ref is not None:
            request.external_ref = g.external_ref
            if not name_account:
                request.account_id = ""
        else:
            request.grant_id = g.grant_id
        self.send_keyed("Revoke", request)

    @precondition(lambda self: self.grants)
    @rule(pick=picks, amount=st.sampled_from([0, 1, 5, 20, 50, 120]), late=st.booleans())
    def restate_a_running_total(self, pick: int, amount: int, *, late: bool) -> None:
        """One series of a grant told again, as a refund's running total is when a
        refund fails and the next refund comes (a later fact: the claim follows it, down
        too) or when Stripe delivers an older event late (nothing changes)."""
        g = self.model.state.grants[self.grants[pick % len(self.grants)]]
        if late:
            fact = self.latest_fact - 1
        else:
            self.latest_fact += 1
            fact = self.latest_fact
        request = pb.RevokeRequest(
            account_id=g.account,
            grant_id=g.grant_id,
            amount=amount,
            idempotency_key=self.key(),
            reason="model",
            cumulative_series=f"{self.prefix}-total",
        )
        request.as_of.CopyFrom(stamp(FACTS_START + datetime.timedelta(seconds=fact)))
        self.send_keyed("Revoke", request)

    @precondition(lambda self: self.sent)
    @rule(pick=picks, change=st.sampled_from(["none", "none", "text", "method"]))
    def replay(self, pick: int, change: str) -> None:
        """The same request again (a replay: nothing new), or its key with another
        request (refused as reused, when the key was taken)."""
        method, original = self.sent[pick % len(self.sent)]
        request: Keyed = type(original).FromString(original.SerializeToString())
        if change == "text":
            if isinstance(request, pb.RevokeRequest):
                request.reason += "!"
            else:
                request.description += "!"
        elif change == "method":
            key = request.idempotency_key
            account = self.accounts[0]
            if isinstance(request, pb.ReserveRequest):
                method, request = (
                    "Grant",
                    pb.GrantRequest(account_id=account, amount=1, source=pb.GRANT_SOURCE_PROMOTION),
                )
            else:
                method, request = "Reserve", pb.ReserveRequest(account_id=account, amount=1)
            request.idempotency_key = key
        self.dispatch(method, request)

    @rule(which=st.integers(0, 1))
    def balance(self, which: int) -> None:
        account = self.accounts[which]
        now = self.env.clock()
        answer = self.call("GetBalance", pb.GetBalanceRequest(account_id=account))
        want = self.expect(answer, lambda _: self.model.balance(account, now))
        assert (answer.available, answer.reserved, answer.expiring_amount, answer.debt) == (
            want.available,
            want.reserved,
            want.expiring,
            want.debt,
        )
        next_expiry = moment(answer.next_expiry) if answer.HasField("next_expiry") else None
        assert next_expiry == want.next_expiry

    @rule(which=st.integers(0, 1))
    def usage_summary(self, which: int) -> None:
        """GetUsageSummary counts what the stored reservations are (it settles nothing):
        the model's finished ones, all of them within the last 30 days."""
        account = self.accounts[which]
        now = self.env.clock()
        request = pb.GetUsageSummaryRequest(
            account_id=account,
            since=stamp(now - USAGE_SUMMARY_LOOKBACK),
            until=stamp(now + CLOCK_READING_SLACK),
        )
        answer = self.call("GetUsageSummary", request)
        finished = [
            r
            for r in self.model.state.reservations.values()
            if r.account == account and r.status != rules.RESERVED
        ]
        want = []
        # One row per job type (priced reservations have theirs), most finished first.
        for job_type in {r.job_type for r in finished}:
            of_type = [r for r in finished if r.job_type == job_type]
            counts = {
                status: sum(1 for r in of_type if r.status == status)
                for status in (rules.CONFIRMED, rules.RELEASED, rules.EXPIRED)
            }
            want.append(
                (
                    job_type,
                    counts[rules.CONFIRMED],
                    counts[rules.RELEASED],
                    counts[rules.EXPIRED],
                    sum(r.confirmed for r in of_type),
                    counts[rules.CONFIRMED] * 1000 // len(of_type),
                )
            )
        want.sort(key=lambda row: (-(row[1] + row[2] + row[3]), row[0]))
        assert [
            (
                u.job_type,
                u.confirmed,
                u.released,
                u.expired,
                u.captured_amount,
                u.success_per_mille,
            )
            for u in answer.job_types
        ] == want

    @rule(count=st.integers(1, 3))
    def time_passes(self, count: int) -> None:
        self.env.clock.advance(count * TIME_STEP_SECONDS)

    @precondition(lambda self: self.day_jumps < DAY_JUMPS_MAX)
    @rule()
    def next_utc_day(self) -> None:
        """Past the next UTC midnight: the day's spend starts again (the month's too on
        a month's last evening), the rolling window has emptied, every hold and
        step-long grant has expired."""
        self.day_jumps += 1
        self.jump_to(next_midnight(self.env.clock()))
        for account in self.accounts:
            self.check_spend_use(account)

    def owner_or_other(self, owner: str, elsewhere: bool) -> str:
        if not elsewhere:
            return owner
        return next(a for a in self.accounts if a != owner)

    # -- the stored state -----------------------------------------------------------

    @invariant()
    def stored_state_matches_the_model(self) -> None:
        grants, reservations, allocations, debts = self.env.run(self.stored())
        state = self.model.state
        assert grants == {
            g.grant_id: (g.original, g.remaining, g.revoked, g.unrecovered, g.expired, g.debt_paid)
            for g in state.grants.values()
        }
        assert reservations == {
            r.reservation_id: (
                r.amount,
                r.status,
                r.confirmed,
                r.returned,
                r.overrun,
                r.overrun_debt,
            )
            for r in state.reservations.values()
        }
        assert debts == {a: state.debt.get(a, 0) for a in state.accounts}
        assert allocations == {
            r.reservation_id: [(a.grant_id, a.amount, a.returned) for a in r.allocations]
            for r in state.reservations.values()
        }

    @invariant()
    def the_outbox_matches_the_model(self) -> None:
        """Every change the model made is one event of the stream, and each account's
        latest event carries its available balance."""
        events, latest = self.env.run(self.stored_events())
        state = self.model.state
        settled = {
            rules.CONFIRMED: "confirmed",
            rules.RELEASED: "released",
            rules.EXPIRED: "reservation_expired",
        }
        want: dict[tuple[str, str], int] = {}
        for g in state.grants.values():
            want[("granted", g.grant_id)] = g.original
        for r in state.reservations.values():
            want[("reserved", r.reservation_id)] = r.amount
            if r.status in settled:
                amount = r.confirmed if r.status == rules.CONFIRMED else r.amount
                want[(settled[r.status], r.reservation_id)] = amount
        assert events == want
        for account in self.accounts:
            remaining = sum(g.remaining for g in state.grants.values() if g.account == account)
            assert latest.get(account, 0) == remaining

    async def stored_events(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """(type, grant or reservation) → amount of the accounts' grant and reservation
        events (a repeat would fail the comparison by its count); account → the latest
        event's available_after."""
        params = {"accounts": self.accounts}
        async with self.env.admin.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT event_type, coalesce(reservation_id, grant_id)::text, amount"
                        " FROM ledger_events WHERE account_id = ANY(:accounts) AND event_type IN"
                        " ('granted', 'reserved', 'confirmed', 'released', 'reservation_expired')"
                    ),
                    params,
                )
            ).all()
            latest = await conn.execute(
                text(
                    "SELECT DISTINCT ON (account_id) account_id, available_after"
                    " FROM ledger_events WHERE account_id = ANY(:accounts)"
                    " ORDER BY account_id, stream_position DESC, seq DESC"
                ),
                params,
            )
        events = {(row[0], row[1]): row[2] for row in rows}
        assert len(events) == len(rows), "an event written twice"
        return events, {row[0]: row[1] for row in latest}

    async def stored(
        self,
    ) -> tuple[
        dict[str, tuple[int, ...]],
        dict[str, tuple[int, ...]],
        dict[str, list[tuple[Any, ...]]],
        dict[str, int],
    ]:
        params = {"accounts": self.accounts}
        async with self.env.admin.connect() as conn:
            grant_rows = await conn.execute(
                text(
                    "SELECT grant_id::text, original_amount, remaining_amount, revoked_amount,"
                    " unrecovered_amount, expired_amount, debt_paid_amount FROM grants"
                    " WHERE account_id = ANY(:accounts)"
                ),
                params,
            )
            reservation_rows = await conn.execute(
                text(
                    "SELECT reservation_id::text, amount, status, confirmed_amount,"
                    " returned_amount, overrun_amount, overrun_debt_amount FROM reservations"
                    " WHERE account_id = ANY(:accounts)"
                ),
                params,
            )
            allocation_rows = await conn.execute(
                text(
                    "SELECT reservation_id::text, grant_id::text, amount, returned_amount"
                    " FROM allocations WHERE account_id = ANY(:accounts)"
                    " ORDER BY reservation_id, burn_rank"
                ),
                params,
            )
            debt_rows = await conn.execute(
                text("SELECT account_id, debt FROM accounts WHERE account_id = ANY(:accounts)"),
                params,
            )
        allocations: dict[str, list[tuple[Any, ...]]] = {}
        for rid, gid, amount, returned in allocation_rows:
            allocations.setdefault(rid, []).append((gid, amount, returned))
        return (
            {row[0]: tuple(row[1:]) for row in grant_rows},
            {row[0]: tuple(row[1:]) for row in reservation_rows},
            allocations,
            {row[0]: row[1] for row in debt_rows},
        )


def next_midnight(now: datetime.datetime) -> datetime.datetime:
    return datetime.datetime.combine(
        now.date() + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )


def next_month(now: datetime.datetime) -> datetime.datetime:
    first = now.date().replace(day=1) + datetime.timedelta(days=32)
    return datetime.datetime.combine(first.replace(day=1), datetime.time(), datetime.UTC)


def _limit_named(err: grpc.aio.AioRpcError) -> str:
    """The spend limit a refusal names in its ErrorInfo ("" for any other refusal)."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.metadata.get("limit", ""))
    return ""


def _new_id_of(answer: Any) -> str:
    if isinstance(answer, pb.GrantResponse):
        return answer.grant.grant_id
    if isinstance(answer, pb.ReserveResponse):
        return answer.reservation.reservation_id
    if isinstance(answer, pb.TransferResponse):
        return answer.transfer.transfer_id
    return ""


@pytest.fixture
async def event_loop_of_session() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_every_answer_and_stored_state_matches_the_model(
    event_loop_of_session: asyncio.AbstractEventLoop,
    ops: Stub,
    clock: MovableClock,
    admin_engine: AsyncEngine,
) -> None:
    env = Env(event_loop_of_session, ops, clock, admin_engine)

    class Machine(LedgerMachine):
        def __init__(self) -> None:
            super().__init__(env)

    run_state_machine_as_test(Machine, settings=PROFILE)
