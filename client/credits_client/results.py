"""What calls return: small frozen dataclasses, amounts as `int`, times as aware UTC
`datetime`s, enums instead of protobuf numbers. Nothing here is a protobuf message."""

import datetime
import enum
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from credits.v1 import credits_pb2 as pb

_RESERVATION_STATUS_PREFIX = "RESERVATION_STATUS_"
_GRANT_SOURCE_PREFIX = "GRANT_SOURCE_"
_ENTRY_KIND_PREFIX = "ENTRY_KIND_"
_EVENT_TYPE_PREFIX = "EVENT_TYPE_"


class ReservationStatus(enum.StrEnum):
    # Never sent by the service; also stands for a status newer than this client.
    UNSPECIFIED = "unspecified"
    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    EXPIRED = "expired"


class GrantSource(enum.StrEnum):
    """Why credits are granted; `grant(source=...)` takes a member or its plain value."""

    # Refused in a request; on a grant, a source newer than this client.
    UNSPECIFIED = "unspecified"
    PURCHASE = "purchase"
    SIGNUP_BONUS = "signup_bonus"
    PROMOTION = "promotion"
    ADJUSTMENT = "adjustment"
    TRANSFER = "transfer"  # arrived by a transfer; never accepted by `grant`


class EntryKind(enum.StrEnum):
    """What moved credits in a ledger entry (see the contract's EntryKind)."""

    # Never sent by the service; also stands for a kind newer than this client.
    UNSPECIFIED = "unspecified"
    GRANT = "grant"
    RESERVE = "reserve"
    RELEASE = "release"
    CONFIRM_RETURN = "confirm_return"
    RESERVATION_EXPIRY = "reservation_expiry"
    GRANT_EXPIRY = "grant_expiry"
    REVOKE = "revoke"
    REVOKE_REVERSAL = "revoke_reversal"
    OVERRUN = "overrun"  # available credits a Confirm took beyond the hold
    DEBT_REPAYMENT = "debt_repayment"  # credits of a new grant that paid the debt
    TRANSFER_OUT = "transfer_out"
    TRANSFER_IN = "transfer_in"


class EventType(enum.StrEnum):
    """What an event is about (see the contract's EventType)."""

    # Never sent by the service; also stands for a type newer than this client.
    UNSPECIFIED = "unspecified"
    GRANTED = "granted"
    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    RESERVATION_EXPIRED = "reservation_expired"
    GRANT_EXPIRED = "grant_expired"
    REVOKED = "revoked"
    REVOCATION_WITHDRAWN = "revocation_withdrawn"
    ACCOUNT_SETTINGS_CHANGED = "account_settings_changed"
    BALANCE_LOW = "balance_low"
    BALANCE_DEPLETED = "balance_depleted"
    BALANCE_RECOVERED = "balance_recovered"
    TRANSFER_SENT = "transfer_sent"
    # A price version set or retired: no account_id, the version in Event.price.
    PRICE_SET = "price_set"
    PRICE_RETIRED = "price_retired"


_STATUS_OF_NUMBER = {
    pb.ReservationStatus.Value(_RESERVATION_STATUS_PREFIX + status.name): status
    for status in ReservationStatus
}
_SOURCE_OF_NUMBER = {
    pb.GrantSource.Value(_GRANT_SOURCE_PREFIX + source.name): source for source in GrantSource
}

_KIND_OF_NUMBER = {pb.EntryKind.Value(_ENTRY_KIND_PREFIX + kind.name): kind for kind in EntryKind}


_TYPE_OF_NUMBER = {
    pb.EventType.Value(_EVENT_TYPE_PREFIX + event_type.name): event_type for event_type in EventType
}


def event_type_message(event_type: EventType | str) -> pb.EventType.ValueType:
    """The contract's number of an event type; ValueError for an unknown one."""
    return pb.EventType.Value(_EVENT_TYPE_PREFIX + EventType(event_type).name)


def source_message(source: GrantSource | str) -> pb.GrantSource.ValueType:
    """The contract's number of a source; ValueError for an unknown one."""
    return pb.GrantSource.Value(_GRANT_SOURCE_PREFIX + GrantSource(source).name)


def kind_message(kind: EntryKind | str) -> pb.EntryKind.ValueType:
    """The contract's number of an entry kind; ValueError for an unknown one."""
    return pb.EntryKind.Value(_ENTRY_KIND_PREFIX + EntryKind(kind).name)


def _time(stamp: timestamp_pb2.Timestamp) -> datetime.datetime:
    return stamp.ToDatetime(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    account_id: str
    amount: int
    confirmed_amount: int
    status: ReservationStatus
    job_id: str
    job_type: str
    description: str
    created_at: datetime.datetime
    expires_at: datetime.datetime
    returned_amount: int  # went back to the grants (released, expired, not captured)
    # The reason given to Release, as given (any character but NUL: escape it before
    # showing it on a terminal); empty unless released by Release.
    release_reason: str
    # What Confirm(allow_overrun=True) captured beyond `amount`; part of confirmed_amount.
    overrun_amount: int
    # A reservation priced by quantity: the price version it was priced at, that
    # version's unit price and the quantity (amount = unit_price * quantity); all 0 when
    # the caller gave the amount.
    price_version: int
    unit_price: int
    quantity: int

    @classmethod
    def from_message(cls, message: pb.Reservation) -> "Reservation":
        return cls(
            reservation_id=message.reservation_id,
            account_id=message.account_id,
            amount=message.amount,
            confirmed_amount=message.confirmed_amount,
            status=_STATUS_OF_NUMBER.get(message.status, ReservationStatus.UNSPECIFIED),
            job_id=message.job_id,
            job_type=message.job_type,
            description=message.description,
            created_at=_time(message.created_at),
            expires_at=_time(message.expires_at),
            returned_amount=message.returned_amount,
            release_reason=message.release_reason,
            overrun_amount=message.overrun_amount,
            price_version=message.price_version,
            unit_price=message.unit_price,
            quantity=message.quantity,
        )


@dataclass(frozen=True)
class Reserved(Reservation):
    """What `reserve` returns: the reservation and the idempotency key the call used
    (a repeat with that key returns the same reservation)."""

    idempotency_key: str


@dataclass(frozen=True)
class Grant:
    grant_id: str
    account_id: str
    original_amount: int
    remaining_amount: int
    source: GrantSource
    external_ref: str
    created_at: datetime.datetime
    expires_at: datetime.datetime | None  # None: the credits never expire
    revoked_amount: int
    priority: int
    unrecovered_amount: int  # claimed but spent or held: credits coming back pay it first
    expired_amount: int

    @classmethod
    def from_message(cls, message: pb.Grant) -> "Grant":
        return cls(
            grant_id=message.grant_id,
            account_id=message.account_id,
            original_amount=message.original_amount,
            remaining_amount=message.remaining_amount,
            source=_SOURCE_OF_NUMBER.get(message.source, GrantSource.UNSPECIFIED),
            external_ref=message.external_ref,
            created_at=_time(message.created_at),
            expires_at=_time(message.expires_at) if message.HasField("expires_at") else None,
            revoked_amount=message.revoked_amount,
            priority=message.priority,
            unrecovered_amount=message.unrecovered_amount,
            expired_amount=message.expired_amount,
        )


@dataclass(frozen=True)
class Granted(Grant):
    """What `grant` returns: the grant, the idempotency key the call used, and whether the
    service answered a repeat of an earlier call (then nothing changed)."""

    idempotency_key: str
    replayed: bool = False


@dataclass(frozen=True)
class Revocation:
    """What one `revoke` call changed on its grant (see the contract's RevokeResponse)."""

    grant: Grant
    revoked_amount: int
    unrecovered_amount: int
    restored_amount: int
    cancelled_amount: int
    idempotency_key: str

    @classmethod
    def from_message(cls, message: pb.RevokeResponse, idempotency_key: str) -> "Revocation":
        return cls(
            grant=Grant.from_message(message.grant),
            revoked_amount=message.revoked_amount,
            unrecovered_amount=message.unrecovered_amount,
            restored_amount=message.restored_amount,
            cancelled_amount=message.cancelled_amount,
            idempotency_key=idempotency_key,
        )


@dataclass(frozen=True)
class Balance:
    account_id: str
    available: int  # can be reserved now
    reserved: int  # held by active reservations
    expiring_amount: int  # of `available`, credits that have an expiry
    next_expiry: datetime.datetime | None  # the soonest expiry among them
    debt: int = 0  # what overruns borrowed and grants have not paid back; the next pay it

    @classmethod
    def from_message(cls, message: pb.GetBalanceResponse) -> "Balance":
        return cls(
            account_id=message.account_id,
            available=message.available,
            reserved=message.reserved,
            expiring_amount=message.expiring_amount,
            next_expiry=_time(message.next_expiry) if message.HasField("next_expiry") else None,
            debt=message.debt,
        )


@dataclass(frozen=True)
class GrantLot:
    """A grant as it stands, with what active reservations hold of it."""

    grant: Grant
    held_amount: int

    @classmethod
    def from_message(cls, message: pb.GrantLot) -> "GrantLot":
        return cls(grant=Grant.from_message(message.grant), held_amount=message.held_amount)


@dataclass(frozen=True)
class LedgerEntry:
    """One movement of an account's available credits; `amount` is signed."""

    entry_id: int
    kind: EntryKind
    amount: int
    grant_id: str
    reservation_id: str  # "" when no reservation moved the credits
    revocation_id: str  # "" when no revocation moved them
    created_at: datetime.datetime
    balance_after: int
    # The transfer that moved them, "" when none: the same id on both accounts' entries.
    transfer_id: str = ""

    @classmethod
    def from_message(cls, message: pb.LedgerEntry) -> "LedgerEntry":
        return cls(
            entry_id=message.entry_id,
            kind=_KIND_OF_NUMBER.get(message.kind, EntryKind.UNSPECIFIED),
            amount=message.amount,
            grant_id=message.grant_id,
            reservation_id=message.reservation_id,
            revocation_id=message.revocation_id,
            created_at=_time(message.created_at),
            balance_after=message.balance_after,
            transfer_id=message.transfer_id,
        )


@dataclass(frozen=True)
class Allocation:
    """What one grant gave to a reservation, and how much of it went back."""

    grant_id: str
    amount: int
    returned_amount: int


@dataclass(frozen=True)
class ReservationDetails:
    """One reservation as it stands, the grants its credits came from (in the order
    they were taken), and the latest `expires_at` an extension can set."""

    reservation: Reservation
    allocations: tuple[Allocation, ...]
    extendable_until: datetime.datetime

    @classmethod
    def from_message(cls, message: pb.GetReservationResponse) -> "ReservationDetails":
        return cls(
            reservation=Reservation.from_message(message.reservation),
            allocations=tuple(
                Allocation(a.grant_id, a.amount, a.returned_amount) for a in message.allocations
            ),
            extendable_until=_time(message.extendable_until),
        )


@dataclass(frozen=True)
class Extended:
    """An extended reservation, and the latest `expires_at` a further extension can set."""

    reservation: Reservation
    extendable_until: datetime.datetime

    @classmethod
    def from_message(cls, message: pb.ExtendReservationResponse) -> "Extended":
        return cls(
            reservation=Reservation.from_message(message.reservation),
            extendable_until=_time(message.extendable_until),
        )


@dataclass(frozen=True)
class TransferLot:
    """What one grant of the source gave to a transfer, and the grant it became on the
    destination, which keeps the source grant's expiry and priority."""

    source_grant_id: str
    destination_grant_id: str
    amount: int
    expires_at: datetime.datetime | None  # None: the credits never expire
    priority: int

    @classmethod
    def from_message(cls, message: pb.TransferLot) -> "TransferLot":
        return cls(
            source_grant_id=message.source_grant_id,
            destination_grant_id=message.destination_grant_id,
            amount=message.amount,
            expires_at=_time(message.expires_at) if message.HasField("expires_at") else None,
            priority=message.priority,
        )


@dataclass(frozen=True)
class Transfer:
    """What `transfer` returns: the transfer as it was made (a repeat with the same
    idempotency key returns the same one), its lots in the source's burn-down order, and
    the idempotency key the call used."""

    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount: int
    description: str
    created_at: datetime.datetime
    lots: tuple[TransferLot, ...]
    idempotency_key: str

    @classmethod
    def from_message(cls, message: pb.TransferRecord, idempotency_key: str) -> "Transfer":
        return cls(
            transfer_id=message.transfer_id,
            from_account_id=message.from_account_id,
            to_account_id=message.to_account_id,
            amount=message.amount,
            description=message.description,
            created_at=_time(message.created_at),
            lots=tuple(TransferLot.from_message(lot) for lot in message.lots),
            idempotency_key=idempotency_key,
        )


@dataclass(frozen=True)
class AccountSettings:
    """How one account is run; an account nobody has configured has these defaults."""

    frozen: bool = False  # no new holds; confirms and releases of what it holds still work
    overdraft_limit: int = 0  # debt an overrun may leave; 0: none
    spend_limit_day: int = 0  # per UTC day; 0: no limit
    spend_limit_month: int = 0  # per UTC calendar month; 0: no limit
    spend_limit_rolling: int = 0  # per rolling window; 0: no limit
    spend_limit_rolling_hours: int = 0  # the rolling window, 1-744 hours
    # Balance alert thresholds, highest first; None: the service-wide default; (): none.
    balance_alert_thresholds: tuple[int, ...] | None = None

    @classmethod
    def from_message(cls, message: pb.AccountSettings) -> "AccountSettings":
        return cls(
            frozen=message.frozen,
            overdraft_limit=message.overdraft_limit,
            spend_limit_day=message.spend_limit_day,
            spend_limit_month=message.spend_limit_month,
            spend_limit_rolling=message.spend_limit_rolling,
            spend_limit_rolling_hours=message.spend_limit_rolling_hours,
            balance_alert_thresholds=(
                tuple(message.balance_alert_thresholds.thresholds)
                if message.HasField("balance_alert_thresholds")
                else None
            ),
        )


@dataclass(frozen=True)
class SpendLimitUse:
    """One spend limit that is set, with what its current period has used."""

    limit: str  # "day", "month" or "rolling"
    limit_amount: int
    used: int
    # When the period resets; None for a rolling window with nothing counted.
    resets_at: datetime.datetime | None

    @classmethod
    def from_message(cls, message: pb.SpendLimitUse) -> "SpendLimitUse":
        return cls(
            limit=message.limit,
            limit_amount=message.limit_amount,
            used=message.used,
            resets_at=_time(message.resets_at) if message.HasField("resets_at") else None,
        )


@dataclass(frozen=True)
class Account:
    """An account's settings, and the latest step of their audit trail."""

    account_id: str
    settings: AccountSettings
    settings_version: int  # how many audited changes; 0: never changed
    settings_updated_at: datetime.datetime | None
    settings_updated_by: str  # the caller of the latest change; "" when none
    # Each spend limit that is set (day, month, rolling), with its period's use.
    spend_limits: tuple[SpendLimitUse, ...] = ()
    debt: int = 0  # the overdraft debt, as Balance.debt

    @classmethod
    def from_message(cls, message: pb.Account) -> "Account":
        return cls(
            account_id=message.account_id,
            settings=AccountSettings.from_message(message.settings),
            settings_version=message.settings_version,
            settings_updated_at=(
                _time(message.settings_updated_at)
                if message.HasField("settings_updated_at")
                else None
            ),
            settings_updated_by=message.settings_updated_by,
            spend_limits=tuple(SpendLimitUse.from_message(u) for u in message.spend_limits),
            debt=message.debt,
        )


@dataclass(frozen=True)
class Price:
    """One version of a job type's price."""

    job_type: str
    version: int  # unique across job types, increasing in the order versions were set
    unit_price: int  # credit units per unit; 0 when the version retires the job type
    unit: str  # what one unit is, for people; empty when retired
    retired: bool
    effective_at: datetime.datetime
    set_at: datetime.datetime
    set_by: str  # the caller that set it
    reason: str

    @classmethod
    def from_message(cls, message: pb.Price) -> "Price":
        return cls(
            job_type=message.job_type,
            version=message.version,
            unit_price=message.unit_price,
            unit=message.unit,
            retired=message.retired,
            effective_at=_time(message.effective_at),
            set_at=_time(message.set_at),
            set_by=message.set_by,
            reason=message.reason,
        )


@dataclass(frozen=True)
class JobTypeUsage:
    """What the reservations of one job type that finished in a window came to."""

    job_type: str  # as callers gave it in Reserve; "" for none
    confirmed: int
    released: int
    expired: int
    captured_amount: int  # credit units captured by the confirmed ones
    success_per_mille: int  # confirmed out of all three, in thousandths, rounded down

    @classmethod
    def from_message(cls, message: pb.JobTypeUsage) -> "JobTypeUsage":
        return cls(
            job_type=message.job_type,
            confirmed=message.confirmed,
            released=message.released,
            expired=message.expired,
            captured_amount=message.captured_amount,
            success_per_mille=message.success_per_mille,
        )


@dataclass(frozen=True)
class Event:
    """One committed change of the ledger, or a balance alert it caused, or a price
    version set (PRICE_SET, PRICE_RETIRED: no account). Resume a stream after it with
    `watch_events(after_cursor=event.cursor)`."""

    event_id: str  # the same event always has the same id
    cursor: str
    type: EventType
    account_id: str  # "" for price events, which belong to no account
    occurred_at: datetime.datetime
    grant_id: str  # "" when none
    reservation_id: str  # "" when none
    revocation_id: str  # "" when none
    caller: str  # the caller whose idempotency key made the change; "" when none
    amount: int  # granted, reserved, captured, released, expired, taken or given back
    returned_amount: int  # CONFIRMED: what went back
    unrecovered_amount: int  # REVOKED: the new debt; REVOCATION_WITHDRAWN: debt cancelled
    threshold: int  # BALANCE_LOW, BALANCE_RECOVERED: the threshold crossed
    available_after: int  # the account's available balance right after
    # PRICE_SET, PRICE_RETIRED: the version set; None for the others
    price: Price | None = None

    @classmethod
    def from_message(cls, message: pb.Event) -> "Event":
        return cls(
            event_id=message.event_id,
            cursor=message.cursor,
            type=_TYPE_OF_NUMBER.get(message.type, EventType.UNSPECIFIED),
            account_id=message.account_id,
            occurred_at=_time(message.occurred_at),
            grant_id=message.grant_id,
            reservation_id=message.reservation_id,
            revocation_id=message.revocation_id,
            caller=message.caller,
            amount=message.amount,
            returned_amount=message.returned_amount,
            unrecovered_amount=message.unrecovered_amount,
            threshold=message.threshold,
            available_after=message.available_after,
            price=Price.from_message(message.price) if message.HasField("price") else None,
        )
