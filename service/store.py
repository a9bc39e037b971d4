"""PostgreSQL storage of the ledger, through SQLAlchemy's async engine on asyncpg.

Every mutation is one call of a server-side function (migrations/versions/*.sql) in one
autocommitted statement: one round trip, one transaction, one account lock. Reads are
single statements too. Outcomes the caller must see come back as SQLSTATEs of class
'CR' and become the ledger's errors here; a lost connection becomes StoreUnavailable.
"""

import datetime
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service import context, ledger
from service.ledger import (
    Balance,
    Grant,
    GrantCommand,
    GrantSource,
    Reservation,
    ReservationStatus,
    ReserveCommand,
    Revocation,
    RevokeCommand,
    UsageCursor,
)

DOMAIN_ERRORS: Mapping[str, type[ledger.LedgerError]] = {
    "CR001": ledger.InsufficientCredits,
    "CR002": ledger.ReservationNotFound,
    "CR003": ledger.ReservationNotActive,
    "CR004": ledger.IdempotencyKeyReused,
    "CR005": ledger.GrantNotFound,
    "CR006": ledger.CaptureExceedsReservation,
    "CR007": ledger.SignupBonusExists,
    "CR008": ledger.ExternalRefExists,
}
# Unique constraints that a concurrent transaction of another account can trip after
# the function's own check passed.
CONSTRAINT_ERRORS: Mapping[str, type[ledger.LedgerError]] = {
    "uq_grants_external_ref": ledger.ExternalRefExists,
    "uq_grants_one_signup_bonus": ledger.SignupBonusExists,
    "pk_idempotency_keys": ledger.IdempotencyKeyReused,
}
UNIQUE_VIOLATION = "23505"
# Of the client's deadline, this much is kept for the answer to travel back.
ANSWER_MARGIN_SECONDS = 0.02
# lock_timeout (the client's deadline) and statement_timeout ran out.
TIMEOUT_SQLSTATES = ("55P03", "57014")
# Connection exceptions (class 08), shutdown and start-up of the server (57P01-57P03),
# too many connections: the database is not there for us right now.
UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "53300")

RESERVE = text(
    "SELECT * FROM credits_reserve(:caller, :key, :hash, :account, :amount, :ttl,"
    " :job_id, :job_type, :description, CAST(:metadata AS jsonb), :lock_ms)"
)
CONFIRM = text("SELECT * FROM credits_confirm(:account, :reservation, :amount, :lock_ms)")
RELEASE = text("SELECT * FROM credits_release(:account, :reservation, :reason, :lock_ms)")
GRANT = text(
    "SELECT * FROM credits_grant(:caller, :key, :hash, :account, :amount,"
    " CAST(:source AS smallint), :external_ref, :expires_at, :priority, :description,"
    " CAST(:metadata AS jsonb), :lock_ms)"
)
REVOKE = text(
    "SELECT (r.out_grant).*, r.out_revoked, r.out_unrecovered FROM credits_revoke(:caller, :key,"
    " :hash, :account, :grant, :external_ref, :amount, :series, :reason, :lock_ms) AS r"
)
# Available credits count what an expired-but-unsettled reservation still holds: its
# expiry is decided by expires_at, not by when the sweeper runs.
BALANCE = text("""
WITH spendable AS (
  SELECT g.remaining_amount AS amount, g.expires_at
    FROM grants g
   WHERE g.account_id = :account AND g.remaining_amount > 0
     AND (g.expires_at IS NULL OR g.expires_at > now())
  UNION ALL
  SELECT a.amount - a.returned_amount, g.expires_at
    FROM reservations r
    JOIN allocations a ON a.reservation_id = r.reservation_id
    JOIN grants g ON g.grant_id = a.grant_id
   WHERE r.account_id = :account AND r.status = 1 AND r.expires_at <= now()
     AND (g.expires_at IS NULL OR g.expires_at > now())
)
SELECT coalesce(sum(amount), 0)::bigint AS available,
       coalesce(sum(amount) FILTER (WHERE expires_at IS NOT NULL), 0)::bigint AS expiring_amount,
       min(expires_at) AS next_expiry,
       (SELECT coalesce(sum(r.amount), 0)::bigint FROM reservations r
         WHERE r.account_id = :account AND r.status = 1 AND r.expires_at > now()) AS reserved
  FROM spendable
""")
DUE_ACCOUNTS = text("SELECT credits_due_accounts(now(), :limit) AS account_id")
SETTLE = text("SELECT credits_lock(:account, now(), NULL)")
USAGE_FIRST = text(
    "SELECT *, now() AS seen_at FROM reservations WHERE account_id = :account"
    " ORDER BY created_at DESC, reservation_id DESC LIMIT :limit"
)
USAGE_AFTER = text(
    "SELECT *, now() AS seen_at FROM reservations WHERE account_id = :account"
    " AND (created_at, reservation_id) < (:created_at, :reservation_id)"
    " ORDER BY created_at DESC, reservation_id DESC LIMIT :limit"
)


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
) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(database_url),
        # Each call is a single statement that is its own transaction: no BEGIN/COMMIT
        # round trips.
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout_seconds,
        pool_pre_ping=True,
        connect_args={
            "server_settings": {
                "application_name": "credits-service",
                "statement_timeout": str(int(statement_timeout_seconds * 1000)),
            },
        },
    )


def _reservation(row: Row[Any]) -> Reservation:
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
    )


def _grant(row: Row[Any]) -> Grant:
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
    )


def _lock_timeout_ms() -> int | None:
    """How long a call may wait for its account's lock: what remains of the client's
    deadline. A call whose deadline has passed (say, while it waited for a pooled
    connection) does not start at all: its caller has already been told it failed."""
    left = context.seconds_left()
    if left is None:
        return None
    left -= ANSWER_MARGIN_SECONDS
    if left <= 0:
        raise ledger.StoreTimeout()
    # At least 1 ms: 0 would mean no limit at all to PostgreSQL.
    return max(1, int(left * 1000))


def _translate(exc: DBAPIError) -> Exception:
    """The ledger's error for a database error, or the error itself when it is a bug."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if sqlstate in DOMAIN_ERRORS:
        return DOMAIN_ERRORS[sqlstate]()
    if sqlstate == UNIQUE_VIOLATION:
        driver_error = exc.orig.__cause__ if exc.orig is not None else None
        constraint = str(getattr(driver_error, "constraint_name", ""))
        if constraint in CONSTRAINT_ERRORS:
            return CONSTRAINT_ERRORS[constraint]()
    if sqlstate in TIMEOUT_SQLSTATES:
        return ledger.StoreTimeout()
    if exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATE_PREFIXES):
        return ledger.StoreUnavailable()
    return exc


class PostgresStore:
    """The ledger's Store on PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        except (PoolTimeoutError, InterfaceError, OSError) as exc:
            raise ledger.StoreUnavailable() from exc

    async def _one(self, statement: TextClause, params: Mapping[str, object]) -> Row[Any]:
        async with self._connection() as conn:
            result = await conn.execute(statement, {**params, "lock_ms": _lock_timeout_ms()})
            return result.one()

    async def reserve(
        self, cmd: ReserveCommand, ttl: datetime.timedelta, request_hash: bytes
    ) -> Reservation:
        row = await self._one(
            RESERVE,
            {
                "caller": cmd.caller,
                "key": cmd.idempotency_key,
                "hash": request_hash,
                "account": cmd.account_id,
                "amount": cmd.amount,
                "ttl": ttl,
                "job_id": cmd.job_id,
                "job_type": cmd.job_type,
                "description": cmd.description,
                "metadata": json.dumps(dict(cmd.metadata)),
            },
        )
        return _reservation(row)

    async def confirm(
        self, account_id: str, reservation_id: uuid.UUID, amount: int | None
    ) -> Reservation:
        row = await self._one(
            CONFIRM, {"account": account_id, "reservation": reservation_id, "amount": amount}
        )
        return _reservation(row)

    async def release(self, account_id: str, reservation_id: uuid.UUID, reason: str) -> Reservation:
        row = await self._one(
            RELEASE, {"account": account_id, "reservation": reservation_id, "reason": reason}
        )
        return _reservation(row)

    async def grant(self, cmd: GrantCommand, request_hash: bytes) -> Grant:
        row = await self._one(
            GRANT,
            {
                "caller": cmd.caller,
                "key": cmd.idempotency_key,
                "hash": request_hash,
                "account": cmd.account_id,
                "amount": cmd.amount,
                "source": int(cmd.source),
                "external_ref": cmd.external_ref or None,
                "expires_at": cmd.expires_at,
                "priority": cmd.priority,
                "description": cmd.description,
                "metadata": json.dumps(dict(cmd.metadata)),
            },
        )
        return _grant(row)

    async def revoke(
        self, cmd: RevokeCommand, grant_id: uuid.UUID | None, request_hash: bytes
    ) -> Revocation:
        row = await self._one(
            REVOKE,
            {
                "caller": cmd.caller,
                "key": cmd.idempotency_key,
                "hash": request_hash,
                "account": cmd.account_id,
                "grant": grant_id,
                "external_ref": None if grant_id else cmd.external_ref,
                "amount": cmd.amount,
                "series": cmd.cumulative_series or None,
                "reason": cmd.reason,
            },
        )
        return Revocation(_grant(row), row.out_revoked, row.out_unrecovered)

    async def balance(self, account_id: str) -> Balance:
        row = await self._one(BALANCE, {"account": account_id})
        return Balance(
            account_id=account_id,
            available=row.available,
            reserved=row.reserved,
            expiring_amount=row.expiring_amount,
            next_expiry=row.next_expiry,
        )

    async def usage(
        self, account_id: str, limit: int, after: UsageCursor | None
    ) -> tuple[list[Reservation], datetime.datetime]:
        params: dict[str, object] = {"account": account_id, "limit": limit}
        statement = USAGE_FIRST
        if after is not None:
            statement = USAGE_AFTER
            params |= {"created_at": after.created_at, "reservation_id": after.reservation_id}
        async with self._connection() as conn:
            rows = (await conn.execute(statement, params)).all()
            now = rows[0].seen_at if rows else datetime.datetime.now(datetime.UTC)
            return [_reservation(r) for r in rows], now

    async def settle_due(self, accounts_max: int) -> int:
        """Settle up to `accounts_max` accounts that have something due, one
        transaction each; how many were settled."""
        async with self._connection() as conn:
            due = (await conn.execute(DUE_ACCOUNTS, {"limit": accounts_max})).scalars().all()
            for account_id in due:
                await conn.execute(SETTLE, {"account": account_id})
        return len(due)
