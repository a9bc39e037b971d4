"""PostgreSQL storage of the ledger, through SQLAlchemy's async engine on asyncpg.

Every call is one call of a server-side function (service/store/sql/ledger.sql) in one
autocommitted statement: one round trip, one transaction, one account lock; reads settle
the account first like writes do. Outcomes the caller must see come back as SQLSTATEs of
class 'CR' and become the failures of service/ledger/failures.py here; a lost connection
becomes StoreUnavailable.

Statements run on asyncpg directly, on connections of SQLAlchemy's pool: each is
prepared once per connection (asyncpg's statement cache), and a call costs less than
half the CPU time of SQLAlchemy's statement and result layers, which every RPC paid.
"""

import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import asyncpg
from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from service.ledger import failures, limits
from service.ledger.model import (
    Account,
    AccountSettings,
    Allocation,
    Balance,
    EntryKind,
    Event,
    EventCursor,
    EventType,
    Grant,
    Granted,
    GrantLot,
    GrantSource,
    JobTypeUsage,
    LedgerEntry,
    Price,
    Reservation,
    ReservationStatus,
    Revocation,
    SpendLimitUse,
    Transfer,
    TransferLot,
)
from service.ledger.operations import (
    Deadline,
    EntryFilter,
    EventBounds,
    EventPage,
    GrantOrder,
    PriceOrder,
    ReserveOrder,
    RevokeOrder,
    SettingsOrder,
    TransferOrder,
    UsageCursor,
)
from service.ops import metrics
from service.store.events import EventListener

# Unique constraints that a concurrent transaction of another account can trip after
# the function's own check passed.
CONSTRAINT_ERRORS: Mapping[str, type[failures.Failure]] = {
    "uq_grants_external_ref": failures.ExternalRefExists,
    "uq_grants_one_signup_bonus": failures.SignupBonusExists,
    "pk_idempotency_keys": failures.IdempotencyKeyReused,
}
UNIQUE_VIOLATION = "23505"
# Of the client's deadline, this much is kept for the answer to travel back.
ANSWER_MARGIN_SECONDS = 0.02
# lock_timeout (the client's deadline) and statement_timeout ran out.
TIMEOUT_SQLSTATES = ("55P03", "57014")
# Connection exceptions (class 08), shutdown and start-up of the server (57P01-57P03),
# too many connections: the database is not there for us right now.
UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "53300")
# The driver gives up on a statement this long after PostgreSQL's statement_timeout should
# have stopped it: only a database that no longer answers gets there.
DRIVER_TIMEOUT_MARGIN_SECONDS = 1.0
# A call cancelled by its deadline closes its connection (service.store.postgres's execution
# path); PostgreSQL checks this often whether the client of a running statement is still
# there, so that a statement queued on a lock stops instead of running on when the lock
# is freed.
CLIENT_CONNECTION_CHECK_MS = 100

RESERVE = text(
    "SELECT * FROM credits_reserve(:caller, :key, :hash, :account, :amount, :ttl,"
    " :job_id, :job_type, :description, CAST(:metadata AS jsonb), :now, :lock_ms, :quantity,"
    " :amount_max)"
)
CONFIRM = text(
    "SELECT * FROM credits_confirm(:account, :reservation, :amount, :allow_overrun, :now,"
    " :lock_ms, :quantity)"
)
RELEASE = text("SELECT * FROM credits_release(:account, :reservation, :reason, :now, :lock_ms)")
GRANT = text(
    "SELECT * FROM credits_grant(:caller, :key, :hash, :account, :amount,"
    " CAST(:source AS smallint), :external_ref, :expires_at, :priority, :description,"
    " CAST(:metadata AS jsonb), :now, :lock_ms)"
)
REVOKE = text(
    "SELECT (r.out_grant).*, r.out_revoked, r.out_unrecovered, r.out_restored, r.out_cancelled"
    " FROM credits_revoke(:caller, :key, :hash, :account, :grant, :external_ref, :amount,"
    " :series, :withdraw, :as_of, :reason, :now, :lock_ms) AS r"
)
TRANSFER = text(
    "SELECT * FROM credits_transfer(:caller, :key, :hash, :from_account, :to_account, :amount,"
    " :description, :now, :lock_ms)"
)
BALANCE = text("SELECT * FROM credits_balance(:account, :now, :lock_ms)")
USAGE = text(
    "SELECT * FROM credits_usage(:account, :limit, :after_created, :after_id, :now, :lock_ms)"
)
LIST_GRANTS = text(
    "SELECT (r.out_grant).*, r.out_held FROM credits_list_grants(:account, :include_finished,"
    " :limit, :after, :now, :lock_ms) AS r"
)
LIST_ENTRIES = text(
    "SELECT * FROM credits_list_entries(:account, :since, :until, :kinds, :limit, :after,"
    " :now, :lock_ms)"
)
GET_RESERVATION = text(
    "SELECT (r.out_reservation).*, r.out_grant_id, r.out_amount, r.out_returned"
    " FROM credits_get_reservation(:account, :reservation, :now, :lock_ms) AS r"
)
EXTEND = text(
    "SELECT * FROM credits_extend(:account, :reservation, :ttl, :lifetime_max, :now, :lock_ms)"
)
GET_ACCOUNT = text(
    "SELECT (r.out_account).*, r.out_spend FROM credits_get_account(:account, :now, :lock_ms) AS r"
)
UPDATE_ACCOUNT_SETTINGS = text(
    "SELECT (r.out_account).*, r.out_spend FROM credits_update_account_settings(:caller,"
    " :account, :settings, :mask, :reason, :now, :lock_ms) AS r"
)
SET_PRICE = text(
    "SELECT * FROM credits_set_price(:caller, :job_type, :unit_price, :unit, :effective_at,"
    " :reason, :now, :lock_ms)"
)
LIST_PRICES = text("SELECT * FROM credits_list_prices(:at, :limit, :after)")
PRICE_HISTORY = text("SELECT * FROM credits_price_history(:job_type, :limit, :after)")
USAGE_SUMMARY = text("SELECT * FROM credits_usage_summary(:account, :since, :until, :limit)")
READ_EVENTS = text(
    "SELECT (r.out_event).*, r.out_horizon FROM credits_read_events(:after_position,"
    " :after_seq, :account, :types, :limit) AS r"
)
EVENT_BOUNDS = text(
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,"
    " coalesce(max(deleted_through_position), 0) AS position,"
    " coalesce(max(deleted_through_seq), 0) AS seq FROM event_retention"
)
# How many values the outbox's sequence has handed out: one per event written (a
# transaction rolled back after writing its event took one too). Read from the sequence,
# not the table: constant time, and retention's deletes do not take from it.
EVENTS_WRITTEN = text(
    "SELECT coalesce(pg_sequence_last_value("
    "pg_get_serial_sequence('ledger_events', 'seq')::regclass), 0) AS written"
)
SWEEP_EVENTS = text("SELECT credits_sweep_events(:cutoff, :limit)")
# The setting through which each connection tells the SQL functions the service-wide
# default thresholds of balance alerts (credits_default_alert_thresholds).
ALERT_THRESHOLDS_SETTING = "credits.balance_alert_thresholds"
DUE_ACCOUNTS = text("SELECT credits_due_accounts(:now, :limit) AS account_id")
PING = text("SELECT 1")
SETTLE = text("SELECT credits_lock(:account, :now, NULL)")


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql://…` as configured, for SQLAlchemy's asyncpg dialect."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise ValueError("the database URL must start with postgresql://")
    return f"postgresql+asyncpg://{rest}"


def create_engine(
    database_url: str,
    *,
    pool_size: int,
    pool_timeout_seconds: float,
    statement_timeout_seconds: float,
    connect_timeout_seconds: float,
    balance_alert_thresholds: tuple[int, ...] = (),
) -> AsyncEngine:
    engine = create_async_engine(
        sqlalchemy_url(database_url),
        # Each call is a single statement that is its own transaction: no BEGIN/COMMIT
        # round trips.
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout_seconds,
        connect_args={
            "server_settings": {
                "application_name": "credits-service",
                "statement_timeout": str(int(statement_timeout_seconds * 1000)),
                "client_connection_check_interval": str(CLIENT_CONNECTION_CHECK_MS),
                ALERT_THRESHOLDS_SETTING: ",".join(map(str, balance_alert_thresholds)),
            },
            # A database that does not answer (a frozen or unreachable host) fails the call
            # with UNAVAILABLE instead of holding it until the client's deadline.
            "timeout": connect_timeout_seconds,
            "command_timeout": statement_timeout_seconds + DRIVER_TIMEOUT_MARGIN_SECONDS,
        },
    )
    # A process has one engine: what its credits_db_pool_in_use is measured against.
    metrics.DB_POOL_SIZE.set(pool_size)
    return engine


class Row(asyncpg.Record):  # type: ignore[misc]
    """A result row, read by column name as an attribute."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _account(row: Row) -> Account:
    return Account(
        account_id=row.account_id,
        settings=AccountSettings(
            frozen=row.frozen,
            overdraft_limit=row.overdraft_limit,
            spend_limit_day=row.spend_limit_day,
            spend_limit_month=row.spend_limit_month,
            spend_limit_rolling=row.spend_limit_rolling,
            spend_limit_rolling_hours=row.spend_limit_rolling_hours,
            balance_alert_thresholds=(
                None
                if row.balance_alert_thresholds is None
                else tuple(row.balance_alert_thresholds)
            ),
        ),
        settings_version=row.settings_version,
        settings_updated_at=row.settings_updated_at,
        settings_updated_by=row.settings_updated_by,
        spend_limits=tuple(
            SpendLimitUse(
                limit=s["limit"],
                limit_amount=s["limit_amount"],
                used=s["used"],
                resets_at=(
                    datetime.datetime.fromisoformat(s["resets_at"]) if s["resets_at"] else None
                ),
            )
            for s in row.out_spend
        ),
        debt=row.debt,
    )


def _reservation(row: Row) -> Reservation:
    return Reservation(
        reservation_id=row.reservation_id,
        account_id=row.account_id,
        amount=row.amount,
        confirmed_amount=row.confirmed_amount,
        status=ReservationStatus(row.status),
        job_id=row.job_id,
        job_type=row.job_type,
        description=row.description,
        created_at=row.created_at,
        expires_at=row.expires_at,
        returned_amount=row.returned_amount,
        release_reason=row.release_reason,
        overrun_amount=row.overrun_amount,
        price_version=row.price_version,
        unit_price=row.unit_price,
        quantity=row.quantity,
    )


def _price(row: Row) -> Price:
    return Price(
        job_type=row.job_type,
        version=row.version,
        unit_price=row.unit_price,
        unit=row.unit,
        effective_at=row.effective_at,
        set_at=row.set_at,
        set_by=row.set_by,
        reason=row.reason,
    )


def _grant(row: Row) -> Grant:
    return Grant(
        grant_id=row.grant_id,
        account_id=row.account_id,
        original_amount=row.original_amount,
        remaining_amount=row.remaining_amount,
        source=GrantSource(row.source),
        external_ref=row.external_ref,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_amount=row.revoked_amount,
        priority=row.priority,
        unrecovered_amount=row.unrecovered_amount,
        expired_amount=row.expired_amount,
    )


def _entry(row: Row) -> LedgerEntry:
    return LedgerEntry(
        entry_id=row.entry_id,
        kind=EntryKind[row.kind.upper()],
        amount=row.amount,
        grant_id=row.grant_id,
        reservation_id=row.reservation_id,
        revocation_id=row.revocation_id,
        created_at=row.created_at,
        balance_after=row.balance_after,
        transfer_id=row.transfer_id,
    )


def _event(row: Row) -> Event:
    return Event(
        event_id=row.event_id,
        cursor=EventCursor(row.stream_position, row.seq),
        type=EventType[row.event_type.upper()],
        account_id=row.account_id or "",
        occurred_at=row.occurred_at,
        caller=row.caller,
        grant_id=row.grant_id,
        reservation_id=row.reservation_id,
        revocation_id=row.revocation_id,
        amount=row.amount,
        returned_amount=row.returned_amount,
        unrecovered_amount=row.unrecovered_amount,
        threshold=row.threshold,
        available_after=row.available_after,
        price=_event_price(row),
    )


def _event_price(row: Row) -> Price | None:
    """A price event's version, from the copy the event carries."""
    if row.price_version is None:
        return None
    return Price(
        job_type=row.job_type,
        version=row.price_version,
        unit_price=row.unit_price,
        unit=row.unit,
        effective_at=row.effective_at,
        set_at=row.occurred_at,
        set_by=row.caller,
        reason=row.reason,
    )


def _lock_timeout_ms(deadline: Deadline) -> int | None:
    """How long a call may wait for its account's lock: what remains of the client's
    deadline. A call whose deadline has passed (say, while it waited for a pooled
    connection) does not start at all: its caller has already been told it failed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic() - ANSWER_MARGIN_SECONDS
    if left <= 0:
        raise failures.StoreTimeout()
    # At least 1 ms: 0 would mean no limit at all to PostgreSQL.
    return max(1, min(limits.LOCK_TIMEOUT_MS_MAX, int(left * 1000)))


def _failure(
    sqlstate: str, constraint: str | None, detail: str | None = None
) -> failures.Failure | None:
    """The ledger's error for a database error, or None when it is a bug."""
    if sqlstate in failures.BY_SQLSTATE:
        return failures.BY_SQLSTATE[sqlstate].from_database(detail)
    if sqlstate == UNIQUE_VIOLATION and constraint is not None and constraint in CONSTRAINT_ERRORS:
        return CONSTRAINT_ERRORS[constraint]()
    if sqlstate in TIMEOUT_SQLSTATES:
        return failures.StoreTimeout()
    if sqlstate.startswith(UNAVAILABLE_SQLSTATE_PREFIXES):
        return failures.StoreUnavailable()
    return None


def _translate(exc: DBAPIError) -> Exception:
    """The ledger's error for an error SQLAlchemy raised, or the error itself."""
    if exc.connection_invalidated:
        return failures.StoreUnavailable()
    driver_error = exc.orig.__cause__ if exc.orig is not None else None
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return _failure(sqlstate, getattr(driver_error, "constraint_name", None)) or exc


class _Statements:
    """Each SQLAlchemy text() statement in asyncpg's form ($1, $2, …) with the names of
    its parameters in that order, compiled once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._dialect = engine.dialect
        self._compiled: dict[TextClause, tuple[str, tuple[str, ...]]] = {}

    def args(self, statement: TextClause, params: Mapping[str, object]) -> list[object]:
        """[SQL, *the parameters' values in order]."""
        found = self._compiled.get(statement)
        if found is None:
            compiled = statement.compile(dialect=self._dialect)
            # Bounded: statements are the module's constants.
            found = self._compiled[statement] = (str(compiled), tuple(compiled.positiontup or ()))
        sql, names = found
        return [sql, *(params[name] for name in names)]


class PostgresStore:
    """The ledger's Store on PostgreSQL."""

    def __init__(self, engine: AsyncEngine, *, job_types: frozenset[str] = frozenset()) -> None:
        self._engine = engine
        # The job types counted under their own label (service.ops.metrics.job_type_label).
        self._job_types = job_types
        self._statements = _Statements(engine)
        # Checked out without SQLAlchemy's Connection, a failed connect comes as the
        # driver adapter's own error, not wrapped in DBAPIError.
        self._connect_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        # The process's one listening connection, to the engine's database.
        self.signals = EventListener(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        )

    async def _checkout(self) -> Any:
        """A connection of the pool, counting the calls that wait for one."""
        metrics.DB_POOL_WAITING.inc()
        try:
            return await self._engine.raw_connection()
        finally:
            metrics.DB_POOL_WAITING.dec()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """The asyncpg connection of a pooled connection. It goes back to the pool after a
        statement that ended well or with a rule's refusal; after anything else
        (cancellation included, which can leave a statement running) it is closed."""
        try:
            pooled = await self._checkout()
        except DBAPIError as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        except (PoolTimeoutError, InterfaceError, OSError) as exc:
            raise failures.StoreUnavailable() from exc
        except self._connect_error as exc:
            # A database that cannot be connected to now is unavailable, whatever the cause.
            failure = _failure(getattr(exc, "sqlstate", None) or "", None)
            raise (failure or failures.StoreUnavailable()) from exc
        metrics.DB_POOL_IN_USE.inc()
        reusable = False
        try:
            yield pooled.driver_connection
            reusable = True
        except failures.StoreTimeout:
            # The deadline passed before the statement was sent: the connection is fine.
            reusable = True
            raise
        except asyncpg.PostgresError as exc:
            failure = _failure(
                exc.sqlstate or "",
                getattr(exc, "constraint_name", None),
                getattr(exc, "detail", None),
            )
            reusable = failure is not None and not isinstance(failure, failures.StoreUnavailable)
            if failure is None:
                raise
            raise failure from exc
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as exc:
            # A connection that broke under the statement (InternalClientError: its protocol
            # in a state it cannot leave), or the driver's command_timeout: a database that
            # stopped answering.
            raise failures.StoreUnavailable() from exc
        finally:
            metrics.DB_POOL_IN_USE.dec()
            if reusable:
                await greenlet_spawn(pooled.close)
            else:
                # At once, without the polite close that SQLAlchemy tries first, which a
                # connection broken mid-statement answers with an error of its own.
                pooled.invalidate()

    async def _one(
        self, statement: TextClause, params: Mapping[str, object], deadline: Deadline
    ) -> Row:
        async with self._connection() as conn:
            # What is left of the deadline once a connection is ours.
            lock_ms = _lock_timeout_ms(deadline)
            args = self._statements.args(statement, {**params, "lock_ms": lock_ms})
            row: Row | None = await conn.fetchrow(*args, record_class=Row)
        # Every ledger call may have written events (reads settle expiries) or ended a
        # transaction that held the events' horizon back.
        self.signals.changed()
        if row is None:
            raise RuntimeError("a ledger function returned no row")
        return row

    async def reserve(
        self, order: ReserveOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Reservation:
        cmd = order.command
        row = await self._one(
            RESERVE,
            {
                "caller": cmd.caller,
                "key": cmd.idempotency_key,
                "hash": order.request_hash,
                "account": cmd.account_id,
                "amount": cmd.amount,
                "ttl": order.ttl,
                "job_id": cmd.job_id,
                "job_type": cmd.job_type,
                "description": cmd.description,
                "metadata": json.dumps(dict(cmd.metadata)),
                "now": now,
                "quantity": cmd.quantity or None,
                "amount_max": order.amount_max,
            },
            deadline,
        )
        return _reservation(row)

    async def confirm(
        self,
        account_id: str,
        reservation_id: uuid.UUID,
        amount: int | None,
        now: datetime.datetime,
        *,
        allow_overrun: bool,
        quantity: int | None,
        deadline: Deadline,
    ) -> Reservation:
        params = {
            "account": account_id,
            "reservation": reservation_id,
            "amount": amount,
            "allow_overrun": allow_overrun,
            "quantity": quantity,
            "now": now,
        }
        row = await self._one(CONFIRM, params, deadline)
        reservation = _reservation(row)
        if row.settled_at == now:
            self._finished(reservation, "confirmed")
        return reservation

    async def release(
        self,
        account_id: str,
        reservation_id: uuid.UUID,
        reason: str,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> Reservation:
        params = {"account": account_id, "reservation": reservation_id, "reason": reason}
        row = await self._one(RELEASE, {**params, "now": now}, deadline)
        reservation = _reservation(row)
        # A Release of an expired reservation answers it as is: not this call's outcome.
        if row.settled_at == now and reservation.status is ReservationStatus.RELEASED:
            self._finished(reservation, "released")
        return reservation

    def _finished(self, reservation: Reservation, outcome: str) -> None:
        """Count a reservation this call settled. A replay answers the reservation as its
        first call settled it, at that call's time (settled_at), so it is not counted
        again."""
        job_type = metrics.job_type_label(reservation.job_type, self._job_types)
        metrics.RESERVATIONS_FINISHED.labels(job_type, outcome).inc()
        if reservation.confirmed_amount:
            metrics.CREDITS_CAPTURED.labels(job_type).inc(reservation.confirmed_amount)

    async def grant(
        self, order: GrantOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Granted:
        cmd = order.command
        row = await self._one(
            GRANT,
            {
                "caller": cmd.caller,
                "key": cmd.idempotency_key,
                "hash": order.request_hash,
                "account": cmd.account_id,
                "amount": cmd.amount,
                "source": cmd.source,
                "external_ref": cmd.external_ref or None,
                "expires_at": order.expires_at,
                "priority": cmd.priority,
                "description": cmd.description,
                "metadata": json.dumps(dict(cmd.metadata)),
                "now": now,
            },
            deadline,
        )
        # A new grant is created at `now`; a replay answers one created by an earlier call,
        # whose clock reading was earlier (each call reads the clock anew).
        return Granted(_grant(row), replayed=row.created_at != now)

    async def revoke(
        self, order: RevokeOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Revocation:
        cmd = order.command
        row = await self._one(
            REVOKE,
            {
                "caller": cmd.caller,
                "key": cmd.idempotency_key,
                "hash": order.request_hash,
                "account": cmd.account_id,
                "grant": order.grant_id,
                "external_ref": None if order.grant_id else cmd.external_ref,
                "amount": cmd.amount,
                "series": cmd.cumulative_series or None,
                "withdraw": cmd.withdraw,
                "as_of": order.as_of,
                "reason": cmd.reason,
                "now": now,
            },
            deadline,
        )
        return Revocation(
            _grant(row), row.out_revoked, row.out_unrecovered, row.out_restored, row.out_cancelled
        )

    async def transfer(
        self, order: TransferOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Transfer:
        cmd = order.command
        params = {
            "caller": cmd.caller,
            "key": cmd.idempotency_key,
            "hash": order.request_hash,
            "from_account": cmd.from_account_id,
            "to_account": cmd.to_account_id,
            "amount": cmd.amount,
            "description": cmd.description,
            "now": now,
        }
        rows = await self._all(TRANSFER, params, deadline)
        if not rows:
            # A transfer moves a positive amount, so it has at least one lot.
            raise AssertionError("a transfer without lots")
        first = rows[0]
        return Transfer(
            transfer_id=first.out_transfer_id,
            from_account_id=first.out_from_account_id,
            to_account_id=first.out_to_account_id,
            amount=first.out_amount,
            description=first.out_description,
            created_at=first.out_created_at,
            lots=tuple(
                TransferLot(
                    source_grant_id=r.out_source_grant_id,
                    destination_grant_id=r.out_destination_grant_id,
                    amount=r.out_lot_amount,
                    expires_at=r.out_expires_at,
                    priority=r.out_priority,
                )
                for r in rows
            ),
        )

    async def balance(
        self, account_id: str, now: datetime.datetime, *, deadline: Deadline
    ) -> Balance:
        row = await self._one(BALANCE, {"account": account_id, "now": now}, deadline)
        return Balance(
            account_id=account_id,
            available=row.available,
            reserved=row.reserved,
            expiring_amount=row.expiring_amount,
            next_expiry=row.next_expiry,
            debt=row.debt,
        )

    async def _all(
        self, statement: TextClause, params: Mapping[str, object], deadline: Deadline
    ) -> list[Row]:
        async with self._connection() as conn:
            lock_ms = _lock_timeout_ms(deadline)
            args = self._statements.args(statement, {**params, "lock_ms": lock_ms})
            rows: list[Row] = await conn.fetch(*args, record_class=Row)
        self.signals.changed()
        return rows

    async def usage(
        self,
        account_id: str,
        limit: int,
        after: UsageCursor | None,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> list[Reservation]:
        params = {
            "account": account_id,
            "limit": limit,
            "after_created": after.created_at if after else None,
            "after_id": after.reservation_id if after else None,
            "now": now,
        }
        return [_reservation(r) for r in await self._all(USAGE, params, deadline)]

    async def grants(
        self,
        account_id: str,
        include_finished: bool,
        limit: int,
        after: uuid.UUID | None,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> list[GrantLot]:
        params = {
            "account": account_id,
            "include_finished": include_finished,
            "limit": limit,
            "after": after,
            "now": now,
        }
        return [
            GrantLot(_grant(r), r.out_held) for r in await self._all(LIST_GRANTS, params, deadline)
        ]

    async def entries(
        self,
        account_id: str,
        which: EntryFilter,
        limit: int,
        after: int | None,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> list[LedgerEntry]:
        params = {
            "account": account_id,
            "since": which.since,
            "until": which.until,
            "kinds": None if which.kinds is None else sorted(k.stored for k in which.kinds),
            "limit": limit,
            "after": after,
            "now": now,
        }
        return [_entry(r) for r in await self._all(LIST_ENTRIES, params, deadline)]

    async def reservation(
        self,
        account_id: str,
        reservation_id: uuid.UUID,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> tuple[Reservation, tuple[Allocation, ...]]:
        params = {"account": account_id, "reservation": reservation_id, "now": now}
        rows = await self._all(GET_RESERVATION, params, deadline)
        if not rows:
            # A found reservation has allocations (its amount is positive and allocated).
            raise AssertionError("a reservation without allocations")
        first = rows[0]
        allocations = tuple(Allocation(r.out_grant_id, r.out_amount, r.out_returned) for r in rows)
        return _reservation(first), allocations

    async def extend(
        self,
        account_id: str,
        reservation_id: uuid.UUID,
        ttl: datetime.timedelta,
        lifetime_max: datetime.timedelta,
        now: datetime.datetime,
        *,
        deadline: Deadline,
    ) -> Reservation:
        params = {
            "account": account_id,
            "reservation": reservation_id,
            "ttl": ttl,
            "lifetime_max": lifetime_max,
            "now": now,
        }
        return _reservation(await self._one(EXTEND, params, deadline))

    async def account(
        self, account_id: str, now: datetime.datetime, *, deadline: Deadline
    ) -> Account:
        rows = await self._all(GET_ACCOUNT, {"account": account_id, "now": now}, deadline)
        # No row: neither credits nor settings yet, so every setting has its default.
        return _account(rows[0]) if rows else Account(account_id, AccountSettings())

    async def update_account_settings(
        self, order: SettingsOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Account:
        params = {
            "caller": order.caller,
            "account": order.account_id,
            "settings": json.dumps(asdict(order.settings)),
            "mask": list(order.update_mask),
            "reason": order.reason,
            "now": now,
        }
        return _account(await self._one(UPDATE_ACCOUNT_SETTINGS, params, deadline))

    async def set_price(
        self, order: PriceOrder, now: datetime.datetime, *, deadline: Deadline
    ) -> Price:
        params = {**asdict(order), "now": now}
        return _price(await self._one(SET_PRICE, params, deadline))

    async def prices(
        self, at: datetime.datetime, limit: int, after: int | None, *, deadline: Deadline
    ) -> list[Price]:
        params = {"at": at, "limit": limit, "after": after}
        return [_price(r) for r in await self._all(LIST_PRICES, params, deadline)]

    async def price_history(
        self, job_type: str, limit: int, after: int | None, *, deadline: Deadline
    ) -> list[Price]:
        params = {"job_type": job_type, "limit": limit, "after": after}
        return [_price(r) for r in await self._all(PRICE_HISTORY, params, deadline)]

    async def usage_summary(
        self,
        account_id: str | None,
        since: datetime.datetime,
        until: datetime.datetime,
        limit: int,
        *,
        deadline: Deadline,
    ) -> list[JobTypeUsage]:
        params = {"account": account_id, "since": since, "until": until, "limit": limit}
        async with self._connection() as conn:
            # Takes no lock: the deadline only decides whether it starts at all; the
            # statement_timeout bounds the read.
            _lock_timeout_ms(deadline)
            args = self._statements.args(USAGE_SUMMARY, params)
            rows = await conn.fetch(*args, record_class=Row)
        return [
            JobTypeUsage(
                job_type=row.job_type,
                confirmed=row.confirmed,
                released=row.released,
                expired=row.expired,
                captured_amount=row.captured_amount,
            )
            for row in rows
        ]

    async def events(
        self,
        after: EventCursor,
        account_id: str | None,
        types: frozenset[EventType] | None,
        limit: int,
    ) -> EventPage:
        """The events after `after` that no later commit can precede, in stream order."""
        params = {
            "after_position": after.position,
            "after_seq": after.seq,
            "account": account_id,
            "types": None if types is None else sorted(t.stored for t in types),
            "limit": limit,
        }
        args = self._statements.args(READ_EVENTS, params)
        async with self._connection() as conn:
            rows = await conn.fetch(*args, record_class=Row)
        # One row without an event when there is none yet: the horizon is on every row.
        events = [_event(r) for r in rows if r.event_id is not None]
        return EventPage(events, int(rows[0].out_horizon), full=len(events) == limit)

    async def event_bounds(self) -> EventBounds:
        args = self._statements.args(EVENT_BOUNDS, {})
        async with self._connection() as conn:
            row = await conn.fetchrow(*args, record_class=Row)
        return EventBounds(row.horizon, EventCursor(row.position, row.seq))

    async def events_written(self) -> int:
        """How many events the outbox has been given, by every instance, ever."""
        args = self._statements.args(EVENTS_WRITTEN, {})
        async with self._connection() as conn:
            written: int = await conn.fetchval(*args)
        return written

    async def sweep_events(self, cutoff: datetime.datetime) -> int:
        """Delete events older than `cutoff`, a batch at a time; how many."""
        args = self._statements.args(
            SWEEP_EVENTS, {"cutoff": cutoff, "limit": limits.EVENT_SWEEP_BATCH_MAX}
        )
        deleted = 0
        while True:
            async with self._connection() as conn:
                batch: int = await conn.fetchval(*args)
            deleted += batch
            if batch < limits.EVENT_SWEEP_BATCH_MAX:
                return deleted

    async def ping(self) -> None:
        """Whether the database answers (through the pool, as the RPCs reach it)."""
        args = self._statements.args(PING, {})
        async with self._connection() as conn:
            await conn.execute(*args)

    async def due_accounts(self, accounts_max: int, now: datetime.datetime) -> list[str]:
        """Accounts with something due, longest overdue first."""
        args = self._statements.args(DUE_ACCOUNTS, {"limit": accounts_max, "now": now})
        async with self._connection() as conn:
            return [row["account_id"] for row in await conn.fetch(*args)]

    async def settle(self, account_id: str, now: datetime.datetime) -> None:
        """Settle one account in a transaction of its own."""
        args = self._statements.args(SETTLE, {"account": account_id, "now": now})
        async with self._connection() as conn:
            await conn.execute(*args)
        self.signals.changed()
