"""The money rules, called directly in SQL at chosen moments (seconds after T0)."""

from service.ledger import failures, limits
from tests.sql.conftest import Ledger

RESERVED, CONFIRMED, RELEASED, EXPIRED = 1, 2, 3, 4


async def test_reserve_burns_lowest_priority_then_soonest_expiry_then_oldest(sql: Ledger) -> None:
    never = await sql.grant(10, now=0)
    later = await sql.grant(10, now=1, expires=500)
    sooner = await sql.grant(10, now=2, expires=400)
    urgent = await sql.grant(10, now=3, priority=-1)
    r = await sql.reserve(35, now=10)
    rows = await sql.rows(
        "SELECT grant_id, amount FROM allocations WHERE reservation_id = :r ORDER BY burn_rank",
        r=r,
    )
    assert [(row.grant_id, row.amount) for row in rows] == [
        (urgent, 10),
        (sooner, 10),
        (later, 10),
        (never, 5),
    ]


async def test_an_expired_reservation_returns_its_credits_at_its_expiry(sql: Ledger) -> None:
    await sql.grant(100)
    r = await sql.reserve(40, now=0, ttl=30)
    assert await sql.balance(now=29.9) == (60, 40)
    assert await sql.balance(now=30) == (100, 0)
    state = await sql.sqlstate_of(
        "SELECT * FROM credits_confirm(:a, :r, NULL, false, '2030-01-01T00:00:31Z', NULL)",
        a=sql.account,
        r=r,
    )
    assert state == failures.ReservationNotActive.sqlstate
    assert await sql.release(r, now=31) == EXPIRED


async def test_confirming_again_with_another_amount_is_not_active(sql: Ledger) -> None:
    await sql.grant(100)
    r = await sql.reserve(50)
    assert await sql.confirm(r, 30) == CONFIRMED
    assert await sql.confirm(r, 30) == CONFIRMED
    assert await sql.confirm(r, None) == CONFIRMED
    state = await sql.sqlstate_of(
        "SELECT * FROM credits_confirm(:a, :r, 40, false, '2030-01-01Z', NULL)", a=sql.account, r=r
    )
    assert state == failures.ReservationNotActive.sqlstate
    assert await sql.balance() == (70, 0)


async def test_a_debt_that_meets_the_grants_expiry_is_collected_and_revoke_still_works(
    sql: Ledger,
) -> None:
    grant = await sql.grant(100, expires=1.5)
    r = await sql.reserve(100, ttl=30)
    assert await sql.revoke(grant) == (0, 100, 0, 0)
    # After the grant expired, the held credits come back: they pay the debt first.
    assert await sql.release(r, now=2) == RELEASED
    row = await sql.grant_row(grant)
    assert (row.revoked_amount, row.unrecovered_amount, row.expired_amount) == (100, 0, 0)
    # Further revocations have nothing left to ask for, and say so.
    assert await sql.revoke(grant, now=3) == (0, 0, 0, 0)
    assert await sql.revoke(grant, 10, now=3) == (0, 0, 0, 0)
    assert await sql.entries_total() == 0


async def test_the_balance_agrees_with_reserve_when_an_expired_hold_pays_a_debt(
    sql: Ledger,
) -> None:
    grant = await sql.grant(100)
    await sql.reserve(100, ttl=1)
    assert await sql.revoke(grant) == (0, 100, 0, 0)
    assert await sql.balance(now=1.3) == (0, 0)
    state = await sql.sqlstate_of(
        "SELECT * FROM credits_reserve('test', 'k', '\\x00', :a, 100, '1 minute', '', '', '',"
        " '{}', '2030-01-01T00:00:01.4Z', NULL)",
        a=sql.account,
    )
    assert state == failures.InsufficientCredits.sqlstate


async def test_a_withdrawn_claim_cancels_debt_first_then_gives_credits_back(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    r = await sql.reserve(300)
    assert await sql.revoke(grant, series="dispute:1") == (700, 300, 0, 0)
    assert await sql.revoke(grant, series="dispute:1", withdraw=True) == (0, 0, 700, 300)
    assert await sql.balance() == (700, 300)
    assert await sql.release(r) == RELEASED
    assert await sql.balance() == (1000, 0)
    # Withdrawn for good: the series claims nothing any more.
    assert await sql.revoke(grant, series="dispute:1") == (0, 0, 0, 0)
    assert await sql.entries_total() == 1000


async def test_claims_converge_whatever_order_they_arrive_in(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    await sql.revoke(grant, series="dispute:1")  # everything
    await sql.revoke(grant, 400, series="refund:1")  # late: the dispute took it already
    await sql.revoke(grant, 300, series="refund:1")  # an older delivery: changes nothing
    assert await sql.balance() == (0, 0)
    await sql.revoke(grant, series="dispute:1", withdraw=True)
    assert await sql.balance() == (600, 0)
    row = await sql.grant_row(grant)
    assert (row.revoked_amount, row.unrecovered_amount) == (400, 0)


async def test_credits_given_back_to_an_expired_grant_expire(sql: Ledger) -> None:
    grant = await sql.grant(100, expires=10)
    await sql.revoke(grant, series="dispute:1")
    assert await sql.revoke(grant, now=20, series="dispute:1", withdraw=True) == (0, 0, 100, 0)
    row = await sql.grant_row(grant)
    assert (row.remaining_amount, row.revoked_amount, row.expired_amount) == (0, 0, 100)
    assert await sql.entries_total() == 0


async def test_a_grant_replay_answers_after_its_expiry_has_passed(sql: Ledger) -> None:
    first = await sql.grant(10, now=0, expires=5, key="same")
    assert await sql.grant(10, now=60, expires=5, key="same") == first
    state = await sql.sqlstate_of(
        "SELECT * FROM credits_grant('test', 'new', '\\x00', :a, 10, CAST(1 AS smallint), NULL,"
        " '2030-01-01T00:00:05Z', 0, '', '{}', '2030-01-01T00:01:00Z', NULL)",
        a=sql.account,
    )
    assert state == failures.GrantExpiryPassed.sqlstate


async def test_an_account_cannot_hold_more_than_its_limit(sql: Ledger) -> None:
    half = limits.ACCOUNT_CREDITS_MAX // 2
    await sql.grant(half)
    r = await sql.reserve(half // 2)
    await sql.grant(limits.ACCOUNT_CREDITS_MAX - half)
    state = await sql.sqlstate_of(
        "SELECT * FROM credits_grant('test', 'over', '\\x00', :a, 1, CAST(1 AS smallint), NULL,"
        " NULL, 0, '', '{}', '2030-01-01Z', NULL)",
        a=sql.account,
    )
    assert state == failures.AccountCreditsLimit.sqlstate
    # Held credits count too; once they are spent the account may take more.
    await sql.confirm(r, None)
    await sql.grant(1)
    assert await sql.balance() == (limits.ACCOUNT_CREDITS_MAX - half // 2 + 1, 0)


async def test_due_accounts_come_longest_overdue_first(sql: Ledger) -> None:
    other = Ledger(sql.conn)
    await sql.grant(10)
    await sql.reserve(5, now=0, ttl=10)
    await other.grant(10, expires=5)
    rows = await sql.rows("SELECT credits_due_accounts('2030-01-01T00:00:20Z', 100000) AS a")
    accounts = [row.a for row in rows]
    assert accounts.index(other.account) < accounts.index(sql.account)


async def test_the_service_role_cannot_change_the_ledger(sql: Ledger) -> None:
    state = await sql.sqlstate_of("DELETE FROM ledger_entries WHERE account_id = :a", a=sql.account)
    assert state == "42501"  # insufficient_privilege
