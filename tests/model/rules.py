"""A small pure-Python model of the money rules (service/store/sql/ledger.sql,
docs/contract.md): burn-down order, allocations, partial capture, expiry of holds and grants,
revocations as claims with debt collection, confirms above the hold (overruns) into an
overdraft debt that the next grant pays first, spend limits per UTC day, UTC month and
rolling window (on holds, captures, overruns and credits transferred out), frozen
accounts, transfers between accounts, and idempotency keys. The model-based test
runs the same operations against it and against the real server, and every answer must
agree. It knows nothing of SQL or gRPC: failures are (code name, reason) pairs.

Each operation works on a copy of the state and the copy replaces the state only when
the operation succeeds, because the server's operations are transactions: a refused
call rolls back everything it did, the settling of overdue holds included."""

import copy
import datetime
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

RESERVED, CONFIRMED, RELEASED, EXPIRED = 1, 2, 3, 4
SIGNUP_BONUS = 2
TRANSFER = 5
T = TypeVar("T")


class Refused(Exception):
    """What the server answers instead of a result; `limit` is the spend limit a
    SPEND_LIMIT_EXCEEDED names (ErrorInfo metadata), "" for every other refusal."""

    def __init__(self, code: str, reason: str, limit: str = "") -> None:
        super().__init__(code, reason, limit)
        self.code = code
        self.reason = reason
        self.limit = limit


def spend_limit_exceeded(limit: str) -> Refused:
    return Refused("FAILED_PRECONDITION", "SPEND_LIMIT_EXCEEDED", limit)


INSUFFICIENT = Refused("FAILED_PRECONDITION", "INSUFFICIENT_CREDITS")
NOT_ACTIVE = Refused("FAILED_PRECONDITION", "RESERVATION_NOT_ACTIVE")
CAPTURE_EXCEEDS = Refused("FAILED_PRECONDITION", "CAPTURE_EXCEEDS_RESERVATION")
RESERVATION_NOT_FOUND = Refused("NOT_FOUND", "RESERVATION_NOT_FOUND")
GRANT_NOT_FOUND = Refused("NOT_FOUND", "GRANT_NOT_FOUND")
KEY_REUSED = Refused("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
SIGNUP_BONUS_EXISTS = Refused("ALREADY_EXISTS", "SIGNUP_BONUS_EXISTS")
EXTERNAL_REF_EXISTS = Refused("ALREADY_EXISTS", "EXTERNAL_REF_EXISTS")
EXPIRY_PASSED = Refused("INVALID_ARGUMENT", "INVALID_REQUEST")
LIFETIME_EXCEEDED = Refused("FAILED_PRECONDITION", "RESERVATION_LIFETIME_EXCEEDED")
FROZEN = Refused("FAILED_PRECONDITION", "ACCOUNT_FROZEN")
PRICE_NOT_FOUND = Refused("FAILED_PRECONDITION", "PRICE_NOT_FOUND")
NOT_PRICED = Refused("FAILED_PRECONDITION", "RESERVATION_NOT_PRICED")


@dataclass
class Grant:
    grant_id: str
    account: str
    original: int
    source: int
    priority: int
    expires_at: datetime.datetime | None
    external_ref: str | None
    seq: int
    remaining: int = 0
    revoked: int = 0
    unrecovered: int = 0
    expired: int = 0
    debt_paid: int = 0
    # claim key → (claimed amount, withdrawn)
    # claim key -> (amount, withdrawn, as_of: the time of the fact it states, or None)
    claims: dict[str, tuple[int, bool, datetime.datetime | None]] = field(default_factory=dict)

    def expired_at(self, now: datetime.datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def burn_key(self) -> tuple[int, datetime.datetime, int, str]:
        never = datetime.datetime.max.replace(tzinfo=datetime.UTC)
        # The lots of one transfer are made at one moment (one seq): the server orders
        # them by grant id, as it orders any grants made at the same moment.
        return (self.priority, self.expires_at or never, self.seq, self.grant_id)


@dataclass
class Allocation:
    grant_id: str
    amount: int
    returned: int = 0


@dataclass
class Reservation:
    reservation_id: str
    account: str
    amount: int
    created_at: datetime.datetime
    expires_at: datetime.datetime
    allocations: list[Allocation]  # in burn order
    status: int = RESERVED
    confirmed: int = 0
    returned: int = 0
    overrun: int = 0
    overrun_debt: int = 0
    # Priced by quantity: (price version, unit price, quantity).
    priced: tuple[int, int, int] | None = None
    job_type: str = ""
    # When it was confirmed: an overrun counts as spend then.
    settled_at: datetime.datetime | None = None


@dataclass(frozen=True)
class PriceVersion:
    version: int
    unit_price: int | None  # None: retired
    effective_at: datetime.datetime


@dataclass(frozen=True)
class RevokeResult:
    grant: Grant
    revoked: int
    unrecovered: int
    restored: int
    cancelled: int


@dataclass(frozen=True)
class TransferLot:
    source_grant_id: str
    destination_grant_id: str
    amount: int


@dataclass(frozen=True)
class Transfer:
    transfer_id: str
    source: str
    destination: str
    amount: int
    lots: tuple[TransferLot, ...]  # in the source's burn-down order
    created_at: datetime.datetime


@dataclass(frozen=True)
class SpendLimits:
    """An account's spend limits (0: none), checked in this order."""

    day: int = 0
    month: int = 0
    rolling: int = 0
    rolling_hours: int = 0


@dataclass(frozen=True)
class Balance:
    available: int
    reserved: int
    expiring: int
    next_expiry: datetime.datetime | None
    debt: int


@dataclass
class State:
    grants: dict[str, Grant] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    accounts: set[str] = field(default_factory=set)
    # key → (operation, request, result id)
    keys: dict[str, tuple[str, object, str]] = field(default_factory=dict)
    # revocation id → its amounts (revoked, unrecovered, restored, cancelled)
    revocations: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    # per account: its overdraft limit, its debt, its spend limits; the frozen accounts
    overdraft: dict[str, int] = field(default_factory=dict)
    debt: dict[str, int] = field(default_factory=dict)
    spend_limits: dict[str, SpendLimits] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    transfers: dict[str, Transfer] = field(default_factory=dict)
    # job type → its price versions, in the order they were set
    prices: dict[str, list[PriceVersion]] = field(default_factory=dict)


class Model:
    """The rules, one method per operation. New ids come from the server's answer
    (`new_id`), so that the model and the server can be compared object by object."""

    def __init__(self) -> None:
        self.state = State()
        self._seq = itertools.count()

    def _replayed(self, s: State, key: str, operation: str, request: object) -> str | None:
        known = s.keys.get(key)
        if known is None:
            return None
        if known[0] != operation or known[1] != request:
            raise KEY_REUSED
        return known[2]

    def _return(self, s: State, r: Reservation, amount: int, now: datetime.datetime) -> None:
        """Gives `amount` back to the grants of `r`, last-burned allocation first; debt
        first, then expiry of an expired grant, then the grant."""
        left = amount
        for a in reversed(r.allocations):
            if left == 0:
                break
            open_amount = a.amount - a.returned
            if open_amount == 0:
                continue
            take = min(open_amount, left)
            g = s.grants[a.grant_id]
            collect = min(take, g.unrecovered)
            expire = take - collect if g.expired_at(now) else 0
            a.returned += take
            g.remaining += take - collect - expire
            g.revoked += collect
            g.unrecovered -= collect
            g.expired += expire
            left -= take
        if left != 0:
            raise AssertionError("allocations do not cover the return")

    def _settle(self, s: State, account: str, now: datetime.datetime) -> None:
        due = [
            r
            for r in s.reservations.values()
            if r.account == account and r.status == RESERVED and r.expires_at <= now
        ]
        for r in sorted(due, key=lambda r: r.expires_at):
            self._return(s, r, r.amount, now)
            r.status, r.returned = EXPIRED, r.amount
        for g in s.grants.values():
            if g.account == account and g.remaining > 0 and g.expired_at(now):
                g.expired += g.remaining
                g.remaining = 0

    def _spendable(self, s: State, account: str) -> list[Grant]:
        return sorted(
            (g for g in s.grants.values() if g.account == account and g.remaining > 0),
            key=Grant.burn_key,
        )

    def _spent_since(self, s: State, account: str, since: datetime.datetime) -> int:
        """What active reservations created since then hold and confirmed ones captured
        of their hold, the overruns settled since then, and the credits transferred out
        since then."""
        held = sum(
            r.amount if r.status == RESERVED else r.confirmed - r.overrun
            for r in s.reservations.values()
            if r.account == account and r.status in (RESERVED, CONFIRMED) and r.created_at >= since
        )
        overruns = sum(
            r.overrun
            for r in s.reservations.values()
            if r.account == account
            and r.overrun > 0
            and r.settled_at is not None
            and r.settled_at >= since
        )
        sent = sum(
            t.amount for t in s.transfers.values() if t.source == account and t.created_at >= since
        )
        return held + overruns + sent

    def _use(self, s: State, account: str, now: datetime.datetime) -> list[tuple[str, int, int]]:
        """(name, limit, used) of each limit that is set, in the order they are checked."""
        limits = s.spend_limits.get(account, SpendLimits())
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        periods = (
            ("day", limits.day, day),
            ("month", limits.month, day.replace(day=1)),
            ("rolling", limits.rolling, now - datetime.timedelta(hours=limits.rolling_hours)),
        )
        return [
            (name, limit, self._spent_since(s, account, since))
            for name, limit, since in periods
            if limit > 0
        ]

    def _check_spend(self, s: State, account: str, extra: int, now: datetime.datetime) -> None:
        """The first limit that spending `extra` now would pass."""
        for name, limit, used in self._use(s, account, now):
            if used + extra > limit:
                raise spend_limit_exceeded(name)

    def _run(self, operation: Callable[["State"], T]) -> T:
        trial = copy.deepcopy(self.state)
        result = operation(trial)
        self.state = trial
        return result

    def grant(
        self,
        account: str,
        amount: int,
        source: int,
        key: str,
        request: object,
        *,
        expires_at: datetime.datetime | None,
        priority: int,
        external_ref: str | None,
        now: datetime.datetime,
        new_id: str,
    ) -> Grant:
        def run(s: State) -> Grant:
            s.accounts.add(account)
            self._settle(s, account, now)
            replayed = self._replayed(s, key, "grant", request)
            if replayed is not None:
                return s.grants[replayed]
            if expires_at is not None and expires_at <= now:
                raise EXPIRY_PASSED
            mine = [g for g in s.grants.values() if g.account == account]
            if source == SIGNUP_BONUS and any(g.source == SIGNUP_BONUS for g in mine):
                raise SIGNUP_BONUS_EXISTS
            if external_ref is not None and any(
                g.external_ref == external_ref for g in s.grants.values()
            ):
                raise EXTERNAL_REF_EXISTS
            repaid = min(s.debt.get(account, 0), amount)
            s.debt[account] = s.debt.get(account, 0) - repaid
            g = Grant(
                new_id,
                account,
                amount,
                source,
                priority,
                expires_at,
                external_ref,
                next(self._seq),
                remaining=amount - repaid,
                debt_paid=repaid,
            )
            s.grants[new_id] = g
            s.keys[key] = ("grant", request, new_id)
            return g

        return self._run(run)

    def set_price(self, job_type: str, version: PriceVersion) -> None:
        """A version the server set (its number and effective_at are the server's)."""
        self.state.prices.setdefault(job_type, []).append(version)

    def price_at(self, s: State, job_type: str, at: datetime.datetime) -> PriceVersion | None:
        """The version in effect: the latest effective_at not after `at`, the later set
        of two with the same."""
        in_effect = [v for v in s.prices.get(job_type, []) if v.effective_at <= at]
        return max(in_effect, key=lambda v: (v.effective_at, v.version), default=None)

    def reserve(
        self,
        account: str,
        amount: int,
        ttl: datetime.timedelta,
        key: str,
        request: object,
        *,
        now: datetime.datetime,
        new_id: str,
        job_type: str = "",
        quantity: int | None = None,
    ) -> Reservation:
        def run(s: State) -> Reservation:
            nonlocal amount
            if account in s.accounts:
                self._settle(s, account, now)
            replayed = self._replayed(s, key, "reserve", request)
            if replayed is not None:
                return s.reservations[replayed]
            if account in s.frozen:
                raise FROZEN
            priced = None
            if quantity is not None:
                price = self.price_at(s, job_type, now)
                if price is None or price.unit_price is None:
                    raise PRICE_NOT_FOUND
                amount = price.unit_price * quantity
                priced = (price.version, price.unit_price, quantity)
            self._check_spend(s, account, amount, now)
            allocations, left = [], amount
            for g in self._spendable(s, account):
                if left == 0:
                    break
                take = min(g.remaining, left)
                allocations.append(Allocation(g.grant_id, take))
                left -= take
            if left > 0:
                raise INSUFFICIENT
            for a in allocations:
                s.grants[a.grant_id].remaining -= a.amount
            r = Reservation(
                new_id,
                account,
                amount,
                now,
                now + ttl,
                allocations,
                priced=priced,
                job_type=job_type,
            )
            s.reservations[new_id] = r
            s.keys[key] = ("reserve", request, new_id)
            return r

        return self._run(run)

    def _locked_reservation(
        self, s: State, account: str, reservation_id: str, now: datetime.datetime
    ) -> Reservation:
        if account not in s.accounts:
            raise RESERVATION_NOT_FOUND
        self._settle(s, account, now)
        r = s.reservations.get(reservation_id)
        if r is None or r.account != account:
            raise RESERVATION_NOT_FOUND
        return r

    def confirm(
        self,
        account: str,
        reservation_id: str,
        amount: int | None,
        now: datetime.datetime,
        *,
        allow_overrun: bool = False,
        quantity: int | None = None,
    ) -> Reservation:
        def run(s: State) -> Reservation:
            nonlocal amount
            r = self._locked_reservation(s, account, reservation_id, now)
            if quantity is not None:
                # At the reservation's stored unit price, whatever the price is now.
                if r.priced is None:
                    raise NOT_PRICED
                if quantity > r.priced[2] and not allow_overrun:
                    raise CAPTURE_EXCEEDS
                amount = r.priced[1] * quantity
            if r.status == CONFIRMED and amount in (None, r.confirmed):
                return r
            if r.status != RESERVED:
                raise NOT_ACTIVE
            capture = r.amount if amount is None else amount
            if capture > r.amount:
                if not allow_overrun:
                    raise CAPTURE_EXCEEDS
                self._overrun(s, r, capture - r.amount, now)
            elif capture < r.amount:
                self._return(s, r, r.amount - capture, now)
            r.status, r.confirmed, r.settled_at = CONFIRMED, capture, now
            r.returned = max(r.amount - capture, 0)
            return r

        return self._run(run)

    def _overrun(self, s: State, r: Reservation, extra: int, now: datetime.datetime) -> None:
        """Refused on a frozen account or past a spend limit; the extra from the available
        credits in burn-down order, the rest as debt up to the overdraft limit."""
        if r.account in s.frozen:
            raise FROZEN
        self._check_spend(s, r.account, extra, now)
        left = extra
        for g in self._spendable(s, r.account):
            if left == 0:
                break
            take = min(g.remaining, left)
            g.remaining -= take
            left -= take
        debt = s.debt.get(r.account, 0) + left
        if debt > s.overdraft.get(r.account, 0):
            raise INSUFFICIENT
        s.debt[r.account] = debt
        r.overrun, r.overrun_debt = extra, left

    def update_limits(
        self, account: str, overdraft: int, spend_limits: SpendLimits, now: datetime.datetime
    ) -> None:
        def run(s: State) -> None:
            s.accounts.add(account)
            self._settle(s, account, now)
            s.overdraft[account] = overdraft
            s.spend_limits[account] = spend_limits

        self._run(run)

    def set_frozen(self, account: str, frozen: bool, now: datetime.datetime) -> None:
        """Freezing refuses new holds, overruns and outgoing transfers; nothing else."""

        def run(s: State) -> None:
            s.accounts.add(account)
            self._settle(s, account, now)
            if frozen:
                s.frozen.add(account)
            else:
                s.frozen.discard(account)

        self._run(run)

    def release(self, account: str, reservation_id: str, now: datetime.datetime) -> Reservation:
        def run(s: State) -> Reservation:
            r = self._locked_reservation(s, account, reservation_id, now)
            if r.status in (RELEASED, EXPIRED):
                return r
            if r.status != RESERVED:
                raise NOT_ACTIVE
            self._return(s, r, r.amount, now)
            r.status, r.returned = RELEASED, r.amount
            return r

        return self._run(run)

    def extend(
        self,
        account: str,
        reservation_id: str,
        ttl: datetime.timedelta,
        lifetime_max: datetime.timedelta,
        now: datetime.datetime,
    ) -> Reservation:
        def run(s: State) -> Reservation:
            r = self._locked_reservation(s, account, reservation_id, now)
            if r.status != RESERVED:
                raise NOT_ACTIVE
            if now + ttl > r.created_at + lifetime_max:
                raise LIFETIME_EXCEEDED
            r.expires_at = now + ttl
            return r

        return self._run(run)

    def revoke(
        self,
        account: str,
        target: tuple[str, str],
        amount: int,
        *,
        series: str | None,
        withdraw: bool,
        key: str,
        request: object,
        now: datetime.datetime,
        new_id: str,
        as_of: datetime.datetime | None = None,
    ) -> RevokeResult:
        """`target` is ("grant_id", id) or ("external_ref", ref). A series' claim is the
        one of its latest `as_of` (up or down); an older one changes nothing; equal or
        absent times keep the highest. A timed 0 is nothing, an untimed one everything."""

        def run(s: State) -> RevokeResult:
            kind, value = target
            found = [
                g
                for g in s.grants.values()
                if (g.grant_id if kind == "grant_id" else g.external_ref) == value
            ]
            if not found or (account and found[0].account != account):
                raise GRANT_NOT_FOUND
            g = found[0]
            self._settle(s, g.account, now)
            replayed = self._replayed(s, key, "revoke", request)
            if replayed is not None:
                return RevokeResult(s.grants[g.grant_id], *s.revocations[replayed])
            claim_key = f"call:{new_id}" if series is None else f"series:{series}"
            everything = amount == 0 and as_of is None
            claim = 0 if withdraw else g.original if everything else min(amount, g.original)
            if claim_key not in g.claims:
                g.claims[claim_key] = (claim, withdraw, as_of)
            else:
                old_claim, old_withdrawn, old_as_of = g.claims[claim_key]
                if withdraw:
                    kept = old_claim
                elif as_of is not None and (old_as_of is None or as_of > old_as_of):
                    kept = claim
                elif as_of is not None and old_as_of is not None and as_of < old_as_of:
                    kept = old_claim
                else:
                    kept = max(old_claim, claim)
                times = [t for t in (old_as_of, as_of) if t is not None]
                latest = old_as_of if withdraw else max(times, default=None)
                g.claims[claim_key] = (kept, old_withdrawn or withdraw, latest)
            standing = sum(c for c, withdrawn, _ in g.claims.values() if not withdrawn)
            target_total = min(standing, g.original)
            owed = g.revoked + g.unrecovered
            asked = revoked = cancelled = restored = expire = 0
            if target_total > owed:
                asked = max(min(target_total, g.original - g.expired) - owed, 0)
                revoked = min(asked, g.remaining)
            elif target_total < owed:
                cancelled = min(owed - target_total, g.unrecovered)
                restored = owed - target_total - cancelled
                expire = restored if g.expired_at(now) else 0
            g.remaining += -revoked + restored - expire
            g.revoked += revoked - restored
            g.unrecovered += asked - revoked - cancelled
            g.expired += expire
            amounts = (revoked, asked - revoked, restored, cancelled)
            s.revocations[new_id] = amounts
            s.keys[key] = ("revoke", request, new_id)
            return RevokeResult(g, *amounts)

        return self._run(run)

    def transfer(
        self,
        source: str,
        destination: str,
        amount: int,
        key: str,
        request: object,
        *,
        now: datetime.datetime,
        new_id: str,
        destination_ids: list[str],
    ) -> Transfer:
        """`destination_ids`: the ids the server gave the lots' new grants, in order."""

        def run(s: State) -> Transfer:
            if source in s.accounts:
                self._settle(s, source, now)
            s.accounts.add(destination)
            self._settle(s, destination, now)
            replayed = self._replayed(s, key, "transfer", request)
            if replayed is not None:
                return s.transfers[replayed]
            if source in s.frozen:
                raise FROZEN
            self._check_spend(s, source, amount, now)
            spendable = sorted(
                (g for g in s.grants.values() if g.account == source and g.remaining > 0),
                key=Grant.burn_key,
            )
            taken, left = [], amount
            for g in spendable:
                if left == 0:
                    break
                taken.append((g, min(g.remaining, left)))
                left -= taken[-1][1]
            if left > 0:
                raise INSUFFICIENT
            if len(destination_ids) != len(taken):
                raise AssertionError(
                    f"the server made {len(destination_ids)} lots, not {len(taken)}"
                )
            seq = next(self._seq)
            lots = []
            for (g, take), made in zip(taken, destination_ids, strict=True):
                g.remaining -= take
                s.grants[made] = Grant(
                    made,
                    destination,
                    take,
                    TRANSFER,
                    g.priority,
                    g.expires_at,
                    None,
                    seq,
                    remaining=take,
                )
                lots.append(TransferLot(g.grant_id, made, take))
            t = Transfer(new_id, source, destination, amount, tuple(lots), now)
            s.transfers[new_id] = t
            s.keys[key] = ("transfer", request, new_id)
            return t

        return self._run(run)

    def spend_use(self, account: str, now: datetime.datetime) -> list[tuple[str, int, int]]:
        """GetAccount's use of each spend limit, after settling the account."""

        def run(s: State) -> list[tuple[str, int, int]]:
            if account in s.accounts:
                self._settle(s, account, now)
            return self._use(s, account, now)

        return self._run(run)

    def balance(self, account: str, now: datetime.datetime) -> Balance:
        def run(s: State) -> Balance:
            if account not in s.accounts:
                return Balance(0, 0, 0, None, 0)
            self._settle(s, account, now)
            holding = [g for g in s.grants.values() if g.account == account and g.remaining > 0]
            expiring = [g for g in holding if g.expires_at is not None]
            return Balance(
                sum(g.remaining for g in holding),
                sum(
                    r.amount
                    for r in s.reservations.values()
                    if r.account == account and r.status == RESERVED
                ),
                sum(g.remaining for g in expiring),
                min((g.expires_at for g in expiring if g.expires_at), default=None),
                s.debt.get(account, 0),
            )

        return self._run(run)
