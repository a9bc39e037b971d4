"""Extending a reservation within its lifetime cap, an account's statement and its
grants as listed, called directly in SQL at chosen moments (seconds after T0)."""

import datetime
import uuid

from service.ledger import failures
from tests.sql.conftest import Ledger, at

EXTEND = "SELECT * FROM credits_extend(:a, :r, :ttl, :cap, :now, NULL)"
HOUR = 3600


async def test_an_extension_moves_the_expiry_and_the_hold_outlives_its_first_ttl(
    sql: Ledger,
) -> None:
    await sql.grant(100)
    r = await sql.reserve(40, now=0, ttl=30)
    assert await sql.extend(r, ttl=60, now=20) == at(80)
    assert await sql.balance(now=79) == (60, 40)
    assert await sql.balance(now=80) == (100, 0)


async def test_an_extension_past_the_lifetime_cap_is_refused_and_changes_nothing(
    sql: Ledger,
) -> None:
    await sql.grant(100)
    r = await sql.reserve(40, now=0, ttl=3000)
    # Exactly at the cap is allowed; one second further is not.
    assert await sql.extend(r, ttl=700, now=2900, lifetime_max=HOUR) == at(HOUR)
    state = await sql.sqlstate_of(
        EXTEND,
        a=sql.account,
        r=r,
        ttl=datetime.timedelta(seconds=701),
        cap=datetime.timedelta(seconds=HOUR),
        now=at(2900),
    )
    assert state == failures.ReservationLifetimeExceeded.sqlstate
    (row,) = await sql.rows("SELECT expires_at FROM reservations WHERE reservation_id = :r", r=r)
    assert row.expires_at == at(HOUR)


async def test_only_an_active_reservation_of_the_account_can_be_extended(sql: Ledger) -> None:
    await sql.grant(100)
    overdue = await sql.reserve(10, now=0, ttl=30)
    confirmed = await sql.reserve(10, now=0)
    released = await sql.reserve(10, now=0)
    await sql.confirm(confirmed, 5, now=1)
    await sql.release(released, now=1)
    for r, now in ((overdue, 30), (confirmed, 2), (released, 2)):
        state = await sql.sqlstate_of(
            EXTEND,
            a=sql.account,
            r=r,
            ttl=datetime.timedelta(seconds=60),
            cap=datetime.timedelta(hours=1),
            now=at(now),
        )
        assert state == failures.ReservationNotActive.sqlstate
    # The overdue one was settled by the refused call's lock and went back.
    assert await sql.balance(now=30) == (95, 0)
    state = await sql.sqlstate_of(
        EXTEND,
        a="someone-else",
        r=confirmed,
        ttl=datetime.timedelta(seconds=60),
        cap=datetime.timedelta(hours=1),
        now=at(2),
    )
    assert state == failures.ReservationNotFound.sqlstate


async def test_the_statement_adds_up_to_the_balance_after_every_kind_of_movement(
    sql: Ledger,
) -> None:
    purchase = await sql.grant(100, now=0)
    promo = await sql.grant(50, now=1, expires=100, priority=-1)
    partly = await sql.reserve(70, now=2)
    await sql.confirm(partly, 30, now=3)
    await sql.release(await sql.reserve(20, now=4), now=5)
    await sql.reserve(15, now=6, ttl=10)  # expires at 16
    await sql.revoke(purchase, 25, now=20)
    entries = await sql.entries(now=200)  # the promotion's rest has expired by then
    available, _ = await sql.balance(now=200)
    assert sum(e.amount for e in entries) == available == entries[0].balance_after
    kinds = {e.kind for e in entries}
    assert kinds == {
        "grant",
        "reserve",
        "confirm_return",
        "release",
        "reservation_expiry",
        "revoke",
        "grant_expiry",
    }
    # Newest first, and each balance is the one before it plus the entry's amount.
    oldest_first = entries[::-1]
    assert [e.entry_id for e in oldest_first] == sorted(e.entry_id for e in entries)
    running = 0
    for e in oldest_first:
        running += e.amount
        assert e.balance_after == running
    # A filter picks entries but leaves their balances as they are.
    expiries = await sql.entries(now=200, kinds=["grant_expiry"])
    assert [(e.grant_id, e.balance_after) for e in expiries] == [
        (e.grant_id, e.balance_after) for e in entries if e.kind == "grant_expiry"
    ]
    assert expiries[0].grant_id == promo


async def test_the_statement_pages_by_entry_id(sql: Ledger) -> None:
    for n in range(5):
        await sql.grant(10 + n, now=n)
    first = await sql.entries(now=10, limit=2)
    rest = await sql.entries(now=10, limit=10, after=first[-1].entry_id)
    assert [e.amount for e in first + rest] == [14, 13, 12, 11, 10]


async def test_grants_are_listed_in_burn_down_order_with_what_is_held(sql: Ledger) -> None:
    never = await sql.grant(10, now=0)
    later = await sql.grant(10, now=1, expires=5000)
    sooner = await sql.grant(10, now=2, expires=4000)
    urgent = await sql.grant(10, now=3, priority=-1)
    await sql.reserve(15, now=4)  # all of urgent, half of sooner
    spent = await sql.reserve(10, now=5)  # the rest of sooner, half of later
    await sql.confirm(spent, None, now=6)
    assert await sql.listed_grants(now=7) == [
        (urgent, 0, 10),
        (sooner, 0, 5),
        (later, 5, 0),
        (never, 10, 0),
    ]
    await sql.revoke(urgent, now=8)  # what is held becomes debt
    assert [g for g, _, _ in await sql.listed_grants(now=8)] == [urgent, sooner, later, never]
    # The held credits come back once their reservation expires (at 4 + 900): the
    # revoked grant's pay its debt, so it is finished; the sooner one has 5 again.
    listed = await sql.listed_grants(now=905)
    assert listed == [(sooner, 5, 0), (later, 5, 0), (never, 10, 0)]
    everything = await sql.listed_grants(now=905, include_finished=True)
    assert [g for g, _, _ in everything] == [urgent, sooner, later, never]


async def test_grant_pages_continue_after_the_last_listed_grant_whatever_was_granted_since(
    sql: Ledger,
) -> None:
    async def page(after: uuid.UUID | None, now: float) -> list[uuid.UUID]:
        rows = await sql.rows(
            "SELECT (r.out_grant).grant_id FROM credits_list_grants(:account, false, 2, :after,"
            " :now, NULL) AS r",
            account=sql.account,
            after=after,
            now=at(now),
        )
        return [uuid.UUID(str(r.grant_id)) for r in rows]

    never = await sql.grant(10, now=0)
    expiring = await sql.grant(10, now=1, expires=5000)
    urgent = await sql.grant(10, now=2, priority=-1)
    newest = await sql.grant(10, now=3)
    assert await page(None, now=4) == [urgent, expiring]
    # Granted after the first page: one sorts before where it ended, one after.
    await sql.grant(10, now=5, expires=4000)
    last = await sql.grant(10, now=6)
    assert await page(expiring, now=7) == [never, newest]
    assert await page(newest, now=7) == [last]
    assert await page(last, now=7) == []
    # Another account's grant says nowhere in this account's order.
    assert await page(await Ledger(sql.conn).grant(10, now=7), now=7) == []
