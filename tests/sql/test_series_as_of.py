"""A series' claim ordered by the time of the fact it states (`p_as_of` of credits_revoke):
the latest stands, up or down; a lowered claim gives back what a withdrawn one would.
Times are seconds after T0, like `now`."""

from tests.sql.conftest import Ledger, at

RELEASED = 3


async def test_a_newer_lower_claim_gives_the_remaining_credits_back(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    assert await sql.revoke(grant, 400, series="refund:1", as_of=10) == (400, 0, 0, 0)
    # The refund failed: Stripe's running total, newer, says 100.
    assert await sql.revoke(grant, 100, series="refund:1", as_of=20) == (0, 0, 300, 0)
    assert await sql.balance() == (900, 0)
    row = await sql.grant_row(grant)
    assert (row.remaining_amount, row.revoked_amount, row.unrecovered_amount) == (900, 100, 0)
    assert await sql.entries_total() == 900


async def test_a_timed_zero_claims_nothing(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    await sql.revoke(grant, 400, series="refund:1", as_of=10)
    # A running total back to 0 (the only refund failed) is nothing, not everything.
    assert await sql.revoke(grant, 0, series="refund:1", as_of=20) == (0, 0, 400, 0)
    assert await sql.balance() == (1000, 0)
    # A later refund claims again.
    assert await sql.revoke(grant, 200, series="refund:1", as_of=30) == (200, 0, 0, 0)
    assert await sql.balance() == (800, 0)


async def test_a_lowered_claim_cancels_debt_first_when_the_credits_are_spent(
    sql: Ledger,
) -> None:
    grant = await sql.grant(1000)
    r = await sql.reserve(800)
    # 200 remain: taken; 200 more were held and are owed.
    assert await sql.revoke(grant, 400, series="refund:1", as_of=10) == (200, 200, 0, 0)
    assert await sql.revoke(grant, 100, series="refund:1", as_of=20) == (0, 0, 100, 200)
    row = await sql.grant_row(grant)
    assert (row.revoked_amount, row.unrecovered_amount) == (100, 0)
    assert await sql.balance() == (100, 800)
    assert await sql.release(r) == RELEASED
    assert await sql.balance() == (900, 0)
    assert await sql.entries_total() == 900


async def test_an_older_claim_after_a_newer_one_changes_nothing(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    await sql.revoke(grant, 400, series="refund:1", as_of=10)
    await sql.revoke(grant, 100, series="refund:1", as_of=30)
    # A late delivery of older facts, higher or lower: nothing changes.
    assert await sql.revoke(grant, 400, series="refund:1", as_of=10) == (0, 0, 0, 0)
    assert await sql.revoke(grant, 700, series="refund:1", as_of=20) == (0, 0, 0, 0)
    assert await sql.revoke(grant, 0, series="refund:1", as_of=29) == (0, 0, 0, 0)
    assert await sql.balance() == (900, 0)
    rows = await sql.rows(
        "SELECT claimed_amount, as_of FROM revocation_claims WHERE grant_id = :g", g=grant
    )
    assert [(r.claimed_amount, r.as_of) for r in rows] == [(100, at(30))]


async def test_the_reverse_order_converges_on_the_same_claim(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    await sql.revoke(grant, 100, series="refund:1", as_of=30)
    await sql.revoke(grant, 400, series="refund:1", as_of=10)
    assert await sql.balance() == (900, 0)


async def test_the_same_or_no_time_keeps_the_highest(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    await sql.revoke(grant, 400, series="refund:1", as_of=10)
    assert await sql.revoke(grant, 100, series="refund:1", as_of=10) == (0, 0, 0, 0)
    assert await sql.revoke(grant, 500, series="refund:1", as_of=10) == (100, 0, 0, 0)
    # No time: the highest, as before; the standing time stays.
    assert await sql.revoke(grant, 200, series="refund:1") == (0, 0, 0, 0)
    assert await sql.revoke(grant, 600, series="refund:1") == (100, 0, 0, 0)
    assert await sql.balance() == (400, 0)
    untimed = await sql.grant(1000)
    await sql.revoke(untimed, 400, series="refund:2")
    assert await sql.revoke(untimed, 100, series="refund:2") == (0, 0, 0, 0)
    assert await sql.balance() == (1000, 0)


async def test_a_claim_stored_without_a_time_is_older_than_a_timed_one(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    await sql.revoke(grant, 400, series="refund:1")  # before the gateway sent as_of
    assert await sql.revoke(grant, 100, series="refund:1", as_of=10) == (0, 0, 300, 0)
    assert await sql.balance() == (900, 0)


async def test_withdrawn_stays_withdrawn_whatever_the_time(sql: Ledger) -> None:
    grant = await sql.grant(1000)
    await sql.revoke(grant, 400, series="dispute:1", as_of=10)
    assert await sql.revoke(grant, series="dispute:1", withdraw=True, as_of=20) == (0, 0, 400, 0)
    assert await sql.revoke(grant, 500, series="dispute:1", as_of=30) == (0, 0, 0, 0)
    assert await sql.revoke(grant, 500, series="dispute:1") == (0, 0, 0, 0)
    assert await sql.balance() == (1000, 0)


async def test_a_lowered_claim_is_a_revocation_withdrawn_event_and_keeps_its_time(
    sql: Ledger,
) -> None:
    grant = await sql.grant(1000)
    await sql.revoke(grant, 400, series="refund:1", as_of=10)
    await sql.revoke(grant, 100, series="refund:1", as_of=20)
    events = await sql.rows(
        "SELECT event_type, amount, unrecovered_amount FROM ledger_events"
        " WHERE account_id = :a ORDER BY seq",
        a=sql.account,
    )
    assert [(e.event_type, e.amount, e.unrecovered_amount) for e in events] == [
        ("granted", 1000, 0),
        ("revoked", 400, 0),
        ("revocation_withdrawn", 300, 0),
    ]
    revocations = await sql.rows(
        "SELECT as_of, series_total, restored_amount FROM revocations"
        " WHERE grant_id = :g ORDER BY created_at, as_of",
        g=grant,
    )
    assert [(r.as_of, r.series_total, r.restored_amount) for r in revocations] == [
        (at(10), 400, 0),
        (at(20), 100, 300),
    ]


async def test_credits_given_back_by_a_lowered_claim_to_an_expired_grant_expire(
    sql: Ledger,
) -> None:
    grant = await sql.grant(1000, expires=15)
    await sql.revoke(grant, 400, series="refund:1", as_of=10)
    assert await sql.revoke(grant, 100, now=20, series="refund:1", as_of=12) == (0, 0, 300, 0)
    row = await sql.grant_row(grant)
    assert (row.remaining_amount, row.revoked_amount, row.expired_amount) == (0, 100, 900)
    assert await sql.entries_total() == 0
