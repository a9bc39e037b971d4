"""SQL-level tests of the money rules: each test calls the ledger's functions directly,
as the service's least-privilege role, inside a transaction that is rolled back at the
end (so tests share one database and leave nothing behind), with the time passed in
explicitly instead of slept for."""

import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from service.store.postgres import sqlalchemy_url

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator["Ledger"]:
    engine = create_async_engine(sqlalchemy_url(database_url))
    try:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            try:
                yield Ledger(conn)
            finally:
                await transaction.rollback()
    finally:
        await engine.dispose()


def at(seconds: float) -> datetime.datetime:
    """A moment `seconds` after the tests' fixed start of time."""
    return T0 + datetime.timedelta(seconds=seconds)


class Ledger:
    """Calls of the ledger's functions on one connection; `now` is seconds after T0."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.account = f"sql-{uuid.uuid4().hex[:12]}"

    async def rows(self, statement: str, **params: Any) -> list[Row[Any]]:
        async with self.conn.begin_nested():
            return list((await self.conn.execute(text(statement), params)).all())

    async def grant(
        self,
        amount: int,
        now: float = 0,
        *,
        expires: float | None = None,
        priority: int = 0,
        source: int = 1,
        ref: str | None = None,
        key: str | None = None,
    ) -> uuid.UUID:
        (row,) = await self.rows(
            "SELECT grant_id FROM credits_grant('test', :key, '\\x00', :account, :amount,"
            " CAST(:source AS smallint), :ref, :expires, :priority, '', '{}', :now, NULL)",
            key=key or uuid.uuid4().hex,
            account=self.account,
            amount=amount,
            source=source,
            ref=ref,
            expires=None if expires is None else at(expires),
            priority=priority,
            now=at(now),
        )
        return uuid.UUID(str(row.grant_id))

    async def reserve(self, amount: int, now: float = 0, *, ttl: float = 900) -> uuid.UUID:
        (row,) = await self.rows(
            "SELECT reservation_id FROM credits_reserve('test', :key, '\\x00', :account,"
            " :amount, :ttl, '', '', '', '{}', :now, NULL)",
            key=uuid.uuid4().hex,
            account=self.account,
            amount=amount,
            ttl=datetime.timedelta(seconds=ttl),
            now=at(now),
        )
        return uuid.UUID(str(row.reservation_id))

    async def confirm(self, reservation: uuid.UUID, amount: int | None, now: float = 0) -> int:
        (row,) = await self.rows(
            "SELECT status FROM credits_confirm(:account, :r, :amount, false, :now, NULL)",
            account=self.account,
            r=reservation,
            amount=amount,
            now=at(now),
        )
        return int(row.status)

    async def release(self, reservation: uuid.UUID, now: float = 0) -> int:
        (row,) = await self.rows(
            "SELECT status FROM credits_release(:account, :r, '', :now, NULL)",
            account=self.account,
            r=reservation,
            now=at(now),
        )
        return int(row.status)

    async def revoke(
        self,
        grant: uuid.UUID,
        amount: int = 0,
        now: float = 0,
        *,
        series: str | None = None,
        withdraw: bool = False,
        as_of: float | None = None,
    ) -> tuple[int, int, int, int]:
        """(revoked, unrecovered, restored, cancelled) of one call; `as_of` in seconds like
        `now`."""
        (row,) = await self.rows(
            "SELECT out_revoked, out_unrecovered, out_restored, out_cancelled FROM credits_revoke("
            "'test', :key, '\\x00', :account, :grant, NULL, :amount, :series, :withdraw,"
            " :as_of, '', :now, NULL)",
            key=uuid.uuid4().hex,
            account=self.account,
            grant=grant,
            amount=amount,
            series=series,
            withdraw=withdraw,
            as_of=None if as_of is None else at(as_of),
            now=at(now),
        )
        return (row.out_revoked, row.out_unrecovered, row.out_restored, row.out_cancelled)

    async def balance(self, now: float = 0) -> tuple[int, int]:
        """(available, reserved)."""
        (row,) = await self.rows(
            "SELECT available, reserved FROM credits_balance(:account, :now, NULL)",
            account=self.account,
            now=at(now),
        )
        return int(row.available), int(row.reserved)

    async def extend(
        self, reservation: uuid.UUID, ttl: float, now: float, *, lifetime_max: float = 3600
    ) -> datetime.datetime:
        """The new expires_at of an extension by `ttl` seconds at `now`."""
        (row,) = await self.rows(
            "SELECT expires_at FROM credits_extend(:account, :r, :ttl, :cap, :now, NULL)",
            account=self.account,
            r=reservation,
            ttl=datetime.timedelta(seconds=ttl),
            cap=datetime.timedelta(seconds=lifetime_max),
            now=at(now),
        )
        return row.expires_at  # type: ignore[no-any-return]

    async def entries(
        self,
        now: float = 0,
        *,
        limit: int = 1000,
        after: int | None = None,
        kinds: list[str] | None = None,
    ) -> list[Row[Any]]:
        """The account's statement, newest first."""
        return await self.rows(
            "SELECT * FROM credits_list_entries(:account, NULL, NULL, :kinds, :limit, :after,"
            " :now, NULL)",
            account=self.account,
            kinds=kinds,
            limit=limit,
            after=after,
            now=at(now),
        )

    async def listed_grants(
        self, now: float = 0, *, include_finished: bool = False
    ) -> list[tuple[uuid.UUID, int, int]]:
        """(grant, remaining, held) of the account's grants in burn-down order."""
        rows = await self.rows(
            "SELECT (r.out_grant).grant_id, (r.out_grant).remaining_amount, r.out_held"
            " FROM credits_list_grants(:account, :all, 1000, NULL, :now, NULL) AS r",
            account=self.account,
            all=include_finished,
            now=at(now),
        )
        return [(uuid.UUID(str(r.grant_id)), r.remaining_amount, r.out_held) for r in rows]

    async def grant_row(self, grant: uuid.UUID) -> Row[Any]:
        (row,) = await self.rows("SELECT * FROM grants WHERE grant_id = :g", g=grant)
        return row

    async def entries_total(self) -> int:
        (row,) = await self.rows(
            "SELECT coalesce(sum(amount), 0) AS total FROM ledger_entries WHERE account_id = :a",
            a=self.account,
        )
        return int(row.total)

    async def sqlstate_of(self, statement: str, **params: Any) -> str:
        """The SQLSTATE a statement fails with (it must fail)."""
        try:
            await self.rows(statement, **params)
        except Exception as exc:
            return str(getattr(getattr(exc, "orig", None), "sqlstate", ""))
        raise AssertionError("the statement succeeded")
