"""What the ledger deals in: reservations, grants, revocations, balances. Standard
library only. The enums' numbers are the contract's and the database's too
(tests/sql/test_constants.py checks all three agree)."""

import datetime
import enum
import uuid
from dataclasses import dataclass, fields


class ReservationStatus(enum.IntEnum):
    RESERVED = 1
    CONFIRMED = 2
    RELEASED = 3
    EXPIRED = 4


class GrantSource(enum.IntEnum):
    UNSPECIFIED = 0
    PURCHASE = 1
    SIGNUP_BONUS = 2
    PROMOTION = 3
    ADJUSTMENT = 4
    TRANSFER = 5  # made only by a Transfer, never by a Grant request


GRANTABLE_SOURCES = frozenset(
    int(s) for s in GrantSource if s not in (GrantSource.UNSPECIFIED, GrantSource.TRANSFER)
)


class EntryKind(enum.IntEnum):
    """What moved credits in a ledger entry; the database stores the lower-case name."""

    UNSPECIFIED = 0
    GRANT = 1
    RESERVE = 2
    RELEASE = 3
    CONFIRM_RETURN = 4
    RESERVATION_EXPIRY = 5
    GRANT_EXPIRY = 6
    REVOKE = 7
    REVOKE_REVERSAL = 8
    OVERRUN = 9
    DEBT_REPAYMENT = 12
    TRANSFER_OUT = 10
    TRANSFER_IN = 11

    @property
    def stored(self) -> str:
        return self.name.lower()


LISTABLE_KINDS = frozenset(int(k) for k in EntryKind if k is not EntryKind.UNSPECIFIED)


@dataclass(frozen=True)
class Reservation:
    reservation_id: uuid.UUID
    account_id: str
    amount: int
    confirmed_amount: int
    status: ReservationStatus
    job_id: str
    job_type: str
    description: str
    created_at: datetime.datetime
    expires_at: datetime.datetime
    returned_amount: int
    release_reason: str  # what Release gave, as given; empty unless released by Release
    overrun_amount: int = 0  # captured beyond `amount` (part of confirmed_amount)
    # A reservation priced by quantity: the price version, its unit price and the
    # quantity (amount = unit_price * quantity); all None when the caller gave the amount.
    price_version: int | None = None
    unit_price: int | None = None
    quantity: int | None = None


@dataclass(frozen=True)
class Grant:
    grant_id: uuid.UUID
    account_id: str
    original_amount: int
    remaining_amount: int
    source: GrantSource
    external_ref: str | None
    created_at: datetime.datetime
    expires_at: datetime.datetime | None
    revoked_amount: int
    priority: int
    unrecovered_amount: int
    expired_amount: int


@dataclass(frozen=True)
class Granted:
    """What a Grant did: the grant, and whether the request was a replay of an earlier
    one (then nothing changed)."""

    grant: Grant
    replayed: bool


@dataclass(frozen=True)
class Revocation:
    """What one Revoke call did to its grant."""

    grant: Grant
    revoked_amount: int  # taken from the grant now
    unrecovered_amount: int  # asked for but spent or held: recorded as debt
    restored_amount: int  # revoked credits given back to the grant (a claim withdrawn)
    cancelled_amount: int  # outstanding debt cancelled (a claim withdrawn)


@dataclass(frozen=True)
class Balance:
    account_id: str
    available: int
    reserved: int
    expiring_amount: int
    next_expiry: datetime.datetime | None
    debt: int = 0  # overdraft debt the next grants pay first


@dataclass(frozen=True)
class UsagePage:
    reservations: tuple[Reservation, ...]
    next_page_token: str


@dataclass(frozen=True)
class GrantLot:
    """A grant as it stands, with what active reservations hold of it."""

    grant: Grant
    held_amount: int


@dataclass(frozen=True)
class GrantPage:
    grants: tuple[GrantLot, ...]
    next_page_token: str


@dataclass(frozen=True)
class LedgerEntry:
    entry_id: int
    kind: EntryKind
    amount: int  # signed: what the entry added to the available balance
    grant_id: uuid.UUID
    reservation_id: uuid.UUID | None
    revocation_id: uuid.UUID | None
    created_at: datetime.datetime
    balance_after: int  # the sum of this entry and every earlier one of the account
    # The transfer that moved the credits: the same id on both accounts' entries.
    transfer_id: uuid.UUID | None = None


@dataclass(frozen=True)
class EntryPage:
    entries: tuple[LedgerEntry, ...]
    next_page_token: str


@dataclass(frozen=True)
class Allocation:
    """What one grant gave to a reservation."""

    grant_id: uuid.UUID
    amount: int
    returned_amount: int


@dataclass(frozen=True)
class ReservationDetail:
    reservation: Reservation
    allocations: tuple[Allocation, ...]
    # The latest expires_at an extension may set: created_at plus the lifetime cap.
    extendable_until: datetime.datetime


@dataclass(frozen=True)
class Extension:
    reservation: Reservation
    extendable_until: datetime.datetime


@dataclass(frozen=True)
class TransferLot:
    """What one grant of a transfer's source gave, and the TRANSFER grant it became on the
    destination, with the source grant's expiry and priority."""

    source_grant_id: uuid.UUID
    destination_grant_id: uuid.UUID
    amount: int
    expires_at: datetime.datetime | None
    priority: int


@dataclass(frozen=True)
class Transfer:
    transfer_id: uuid.UUID
    from_account_id: str
    to_account_id: str
    amount: int
    description: str
    created_at: datetime.datetime
    lots: tuple[TransferLot, ...]  # in the source's burn-down order


@dataclass(frozen=True)
class AccountSettings:
    """How one account is run (AccountSettings in the contract). Each field's default is
    what an account nobody has configured gets."""

    frozen: bool = False
    # Debt overruns may leave (0: no overdraft).
    overdraft_limit: int = 0
    # Spend limits (0: none): per UTC day, UTC calendar month, rolling window of hours.
    spend_limit_day: int = 0
    spend_limit_month: int = 0
    spend_limit_rolling: int = 0
    spend_limit_rolling_hours: int = 0
    # Thresholds of balance alerts, highest first; None: the service-wide default; ():
    # none for this account.
    balance_alert_thresholds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SpendLimitUse:
    """One spend limit that is set, with what its current period has used."""

    limit: str  # "day", "month" or "rolling"
    limit_amount: int
    used: int
    resets_at: datetime.datetime | None  # None: a rolling window with nothing counted


# The field names an update_mask may name, in the contract's order.
ACCOUNT_SETTINGS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(AccountSettings))


@dataclass(frozen=True)
class Account:
    account_id: str
    settings: AccountSettings
    # How many audited changes the settings have had; 0: none, the defaults.
    settings_version: int = 0
    settings_updated_at: datetime.datetime | None = None
    settings_updated_by: str | None = None
    spend_limits: tuple[SpendLimitUse, ...] = ()
    debt: int = 0


@dataclass(frozen=True)
class Price:
    """One version of a job type's price; a retired one has no unit price."""

    job_type: str
    version: int
    unit_price: int | None
    unit: str
    effective_at: datetime.datetime
    set_at: datetime.datetime
    set_by: str
    reason: str

    @property
    def retired(self) -> bool:
        return self.unit_price is None


@dataclass(frozen=True)
class PricePage:
    prices: tuple[Price, ...]
    next_page_token: str


PER_MILLE = 1000


@dataclass(frozen=True)
class JobTypeUsage:
    """What the reservations of one job type that finished in a window came to."""

    job_type: str
    confirmed: int
    released: int
    expired: int
    captured_amount: int

    @property
    def success_per_mille(self) -> int:
        """Confirmed out of all finished, in thousandths, rounded down: no floats."""
        finished = self.confirmed + self.released + self.expired
        return self.confirmed * PER_MILLE // finished if finished else 0


class EventType(enum.IntEnum):
    """What an event is about; the database stores the lower-case name."""

    UNSPECIFIED = 0
    GRANTED = 1
    RESERVED = 2
    CONFIRMED = 3
    RELEASED = 4
    RESERVATION_EXPIRED = 5
    GRANT_EXPIRED = 6
    REVOKED = 7
    REVOCATION_WITHDRAWN = 8
    ACCOUNT_SETTINGS_CHANGED = 9
    BALANCE_LOW = 10
    BALANCE_DEPLETED = 11
    BALANCE_RECOVERED = 12
    TRANSFER_SENT = 13
    # Price events belong to no account (Event.account_id empty, Event.price set).
    PRICE_SET = 14
    PRICE_RETIRED = 15

    @property
    def stored(self) -> str:
        return self.name.lower()


WATCHABLE_TYPES = frozenset(int(t) for t in EventType if t is not EventType.UNSPECIFIED)


@dataclass(frozen=True, order=True)
class EventCursor:
    """An event's place in the stream (docs/architecture.md, "Events"): the position (a
    transaction id, at least the writer's own), then the order within it. On the wire it
    is "<position>-<seq>"."""

    position: int
    seq: int

    def __str__(self) -> str:
        return f"{self.position}-{self.seq}"


@dataclass(frozen=True)
class Event:
    event_id: uuid.UUID
    cursor: EventCursor
    type: EventType
    account_id: str
    occurred_at: datetime.datetime
    caller: str | None
    grant_id: uuid.UUID | None
    reservation_id: uuid.UUID | None
    revocation_id: uuid.UUID | None
    amount: int
    returned_amount: int
    unrecovered_amount: int
    threshold: int | None
    available_after: int
    # PRICE_SET and PRICE_RETIRED: the version set (then account_id is empty, and
    # available_after 0); None for every other event.
    price: Price | None = None
