"""One command per RPC, already translated from the wire but not yet validated.

Times keep the wire's shape (whole seconds and nanoseconds) until validation has checked
them: a duration of 10**15 seconds or a timestamp in the year 10**11 is a bad field to
name in the answer, not a crash while translating."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.ledger.model import AccountSettings


@dataclass(frozen=True)
class WireTime:
    """A google.protobuf Duration or Timestamp as received."""

    seconds: int
    nanos: int


@dataclass(frozen=True)
class ReserveCommand:
    caller: str
    account_id: str
    amount: int
    idempotency_key: str
    job_id: str = ""
    job_type: str = ""
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl: WireTime | None = None
    # Priced by the service (amount 0): units of job_type at the price in effect.
    quantity: int = 0


@dataclass(frozen=True)
class ConfirmCommand:
    account_id: str
    reservation_id: str
    amount: int | None = None
    # Lets amount exceed the reservation (an overrun).
    allow_overrun: bool = False
    # The final quantity of a priced reservation, instead of an amount.
    quantity: int | None = None


@dataclass(frozen=True)
class ReleaseCommand:
    account_id: str
    reservation_id: str
    reason: str = ""


@dataclass(frozen=True)
class GrantCommand:
    caller: str
    account_id: str
    amount: int
    # The wire's number: an unknown one is a validation error, not a crash.
    source: int
    idempotency_key: str
    external_ref: str = ""
    expires_at: WireTime | None = None
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0


@dataclass(frozen=True)
class RevokeCommand:
    caller: str
    account_id: str
    idempotency_key: str
    grant_id: str = ""
    external_ref: str = ""
    amount: int = 0
    reason: str = ""
    cumulative_series: str = ""
    withdraw: bool = False
    # The time of the fact a series' claim states: the latest stands, up or down.
    as_of: WireTime | None = None


@dataclass(frozen=True)
class TransferCommand:
    caller: str
    from_account_id: str
    to_account_id: str
    amount: int
    idempotency_key: str
    description: str = ""


@dataclass(frozen=True)
class BalanceQuery:
    account_id: str


@dataclass(frozen=True)
class GrantsQuery:
    account_id: str
    page_size: int = 0
    page_token: str = ""
    include_finished: bool = False


@dataclass(frozen=True)
class EntriesQuery:
    account_id: str
    page_size: int = 0
    page_token: str = ""
    since: WireTime | None = None
    until: WireTime | None = None
    # The wire's numbers: an unknown one is a validation error, not a crash.
    kinds: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReservationQuery:
    account_id: str
    reservation_id: str


@dataclass(frozen=True)
class ExtendCommand:
    account_id: str
    reservation_id: str
    ttl: WireTime | None = None


@dataclass(frozen=True)
class UsageQuery:
    account_id: str
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class UsageSummaryQuery:
    since: WireTime | None
    until: WireTime | None
    # Empty: every account.
    account_id: str = ""


@dataclass(frozen=True)
class AccountQuery:
    account_id: str


@dataclass(frozen=True)
class UpdateAccountSettingsCommand:
    caller: str
    account_id: str
    settings: AccountSettings
    # The wire's field mask paths: only these fields of `settings` are read.
    update_mask: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True)
class SetPriceCommand:
    caller: str
    job_type: str
    unit_price: int = 0
    unit: str = ""
    effective_at: WireTime | None = None
    reason: str = ""
    retire: bool = False


@dataclass(frozen=True)
class PricesQuery:
    at: WireTime | None = None
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class PriceHistoryQuery:
    job_type: str
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class WatchEventsQuery:
    # At most one of after_cursor (as received), from_now and from_oldest; none: from now.
    after_cursor: str | None
    from_oldest: bool
    # Empty: every account.
    account_id: str
    # The wire's EventType numbers; empty: every type.
    types: tuple[int, ...]
