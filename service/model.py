"""What the ledger deals in: reservations, grants, revocations, balances. Standard
library only. The enums' numbers are the contract's and the database's too
(tests/sql/test_constants.py checks all three agree)."""

import datetime
import enum
import uuid
from dataclasses import dataclass


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


GRANTABLE_SOURCES = frozenset(int(s) for s in GrantSource if s is not GrantSource.UNSPECIFIED)


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


@dataclass(frozen=True)
class UsagePage:
    reservations: tuple[Reservation, ...]
    next_page_token: str
