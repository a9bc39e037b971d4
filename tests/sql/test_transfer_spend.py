"""Credits transferred out count as the source's spend (docs/contract.md, "Transfer"):
called in SQL at chosen moments (seconds after T0, a UTC midnight on the first of a
month), so that the day's and the month's resets are crossed without waiting."""

import json
import uuid
from typing import Any

from service.ledger import failures
from tests.sql.conftest import Ledger, at

DAY_SECONDS = 86_400
# T0 is 2030-01-01T00:00:00Z: January has 31 days.
FEBRUARY_SECONDS = 31 * DAY_SECONDS


async def _limits(sql: Ledger, account: str, now: float = 0, **settings: int | bool) -> None:
    await sql.rows(
        "SELECT * FROM credits_update_account_settings('ops', :a, CAST(:s AS jsonb), :m, '',"
        " :now, NULL)",
        a=account,
        s=json.dumps(settings),
        m=list(settings),
        now=at(now),
    )


def _transfer_statement() -> str:
    return (
        "SELECT DISTINCT out_transfer_id FROM credits_transfer('ops', :key, '\\x00', :src,"
        " :dst, :amount, '', :now, NULL)"
    )


async def _transfer(
    sql: Ledger, destination: str, amount: int, now: float = 0, *, key: str | None = None
) -> uuid.UUID:
    (row,) = await sql.rows(
        _transfer_statement(),
        key=key or uuid.uuid4().hex,
        src=sql.account,
        dst=destination,
        amount=amount,
        now=at(now),
    )
    return uuid.UUID(str(row.out_transfer_id))


async def _refusal(sql: Ledger, statement: str, **params: Any) -> tuple[str, dict[str, str]]:
    """(SQLSTATE, DETAIL as JSON or {}) of a statement that must fail."""
    try:
        await sql.rows(statement, **params)
    except Exception as exc:
        cause = getattr(getattr(exc, "orig", None), "__cause__", None)
        detail = getattr(cause, "detail", None)
        return str(getattr(cause, "sqlstate", "")), json.loads(detail) if detail else {}
    raise AssertionError("the statement succeeded")


async def _transfer_refusal(
    sql: Ledger, destination: str, amount: int, now: float = 0
) -> tuple[str, dict[str, str]]:
    return await _refusal(
        sql,
        _transfer_statement(),
        key=uuid.uuid4().hex,
        src=sql.account,
        dst=destination,
        amount=amount,
        now=at(now),
    )


async def _reserve_refusal(sql: Ledger, amount: int, now: float = 0) -> tuple[str, dict[str, str]]:
    return await _refusal(
        sql,
        "SELECT * FROM credits_reserve('test', :key, '\\x00', :a, :amount, '900 seconds', '', '',"
        " '', '{}', :now, NULL)",
        key=uuid.uuid4().hex,
        a=sql.account,
        amount=amount,
        now=at(now),
    )


async def _used(sql: Ledger, account: str, now: float = 0) -> dict[str, int]:
    """Each set limit's use, as GetAccount shows it."""
    (row,) = await sql.rows(
        "SELECT out_spend FROM credits_get_account(:a, :now, NULL)", a=account, now=at(now)
    )
    return {s["limit"]: s["used"] for s in row.out_spend}


async def _transfers_out(sql: Ledger) -> int:
    (row,) = await sql.rows(
        "SELECT count(*) AS n FROM transfers WHERE from_account_id = :a", a=sql.account
    )
    return int(row.n)


async def test_a_transfer_out_counts_against_the_day_limit_and_reserve_sees_it(
    sql: Ledger,
) -> None:
    other = f"{sql.account}-to"
    await sql.grant(1_000)
    await _limits(sql, sql.account, spend_limit_day=100)
    await _transfer(sql, other, 60, now=10)
    assert await _used(sql, sql.account, now=11) == {"day": 60}
    state, detail = await _reserve_refusal(sql, 41, now=12)
    assert (state, detail) == (
        failures.SpendLimitExceeded.sqlstate,
        {"limit": "day", "resets_at": "2030-01-02T00:00:00Z"},
    )
    await sql.reserve(40, now=13)


async def test_a_transfer_that_would_pass_a_limit_is_refused_naming_it_and_changes_nothing(
    sql: Ledger,
) -> None:
    other = f"{sql.account}-to"
    await sql.grant(1_000)
    await _limits(sql, sql.account, spend_limit_month=500)
    await sql.reserve(300, now=5)
    state, detail = await _transfer_refusal(sql, other, 201, now=10)
    assert (state, detail) == (
        failures.SpendLimitExceeded.sqlstate,
        {"limit": "month", "resets_at": "2030-02-01T00:00:00Z"},
    )
    assert await sql.balance(now=11) == (700, 300)
    assert await _transfers_out(sql) == 0
    assert await _used(sql, sql.account, now=11) == {"month": 300}
    await _transfer(sql, other, 200, now=12)


async def test_the_room_a_transfer_used_comes_back_at_the_reset(sql: Ledger) -> None:
    other = f"{sql.account}-to"
    await sql.grant(1_000)
    await _limits(sql, sql.account, spend_limit_day=100, spend_limit_month=150)
    await _transfer(sql, other, 100, now=10)
    assert (await _transfer_refusal(sql, other, 1, now=DAY_SECONDS - 1))[1]["limit"] == "day"
    # The next UTC day: the day's room is back, the month still counts the first 100.
    await _transfer(sql, other, 50, now=DAY_SECONDS)
    assert await _used(sql, sql.account, now=DAY_SECONDS) == {"day": 50, "month": 150}
    assert (await _transfer_refusal(sql, other, 1, now=DAY_SECONDS + 1))[1]["limit"] == "month"
    await _transfer(sql, other, 100, now=FEBRUARY_SECONDS)
    assert await _used(sql, sql.account, now=FEBRUARY_SECONDS) == {"day": 100, "month": 100}


async def test_a_rolling_window_counts_a_transfer_until_the_reset_it_names(sql: Ledger) -> None:
    other = f"{sql.account}-to"
    await sql.grant(1_000)
    await _limits(sql, sql.account, spend_limit_rolling=100, spend_limit_rolling_hours=1)
    await _transfer(sql, other, 70, now=100)
    state, detail = await _reserve_refusal(sql, 31, now=200)
    # The transfer at a whole second still counts at exactly an hour later: the reset is
    # the second after.
    assert (state, detail) == (
        failures.SpendLimitExceeded.sqlstate,
        {"limit": "rolling", "resets_at": "2030-01-01T01:01:41Z"},
    )
    assert (await _reserve_refusal(sql, 31, now=3_700))[1]["limit"] == "rolling"
    await sql.reserve(31, now=3_701)


async def test_a_rolling_reset_of_a_spend_inside_a_second_is_the_next_whole_second(
    sql: Ledger,
) -> None:
    await sql.grant(1_000)
    await _limits(sql, sql.account, spend_limit_rolling=100, spend_limit_rolling_hours=1)
    await sql.reserve(100, now=100.25)
    assert (await _reserve_refusal(sql, 1, now=200))[1]["resets_at"] == "2030-01-01T01:01:41Z"
    await sql.reserve(1, now=3_701)


async def test_a_rolling_reset_skips_reservations_that_spent_nothing(sql: Ledger) -> None:
    """A hold released, or expired and not yet settled, counts nothing, so it cannot be the
    spend whose leaving the window is named as the reset: a retry then would be refused
    again. (A confirmed one always spent: Confirm captures more than 0, and
    ck_reservations_status_consistent holds it.)"""
    await sql.grant(1_000)
    await _limits(sql, sql.account, spend_limit_rolling=100, spend_limit_rolling_hours=1)
    await sql.reserve(40, now=10, ttl=30)
    await sql.release(await sql.reserve(40, now=20), now=21)
    await sql.reserve(100, now=100)
    assert (await _reserve_refusal(sql, 1, now=200))[1]["resets_at"] == "2030-01-01T01:01:41Z"


async def test_credits_transferred_in_count_nothing_for_the_destination(sql: Ledger) -> None:
    other = f"{sql.account}-to"
    await sql.grant(1_000)
    await _limits(sql, other, spend_limit_day=10)
    await _transfer(sql, other, 500, now=10)
    assert await _used(sql, other, now=11) == {"day": 0}


async def test_a_frozen_source_is_refused_as_frozen_before_its_limits(sql: Ledger) -> None:
    other = f"{sql.account}-to"
    await sql.grant(1_000)
    await _limits(sql, sql.account, spend_limit_day=10, frozen=True)
    state, _ = await _transfer_refusal(sql, other, 50, now=10)
    assert state == failures.AccountFrozen.sqlstate


async def test_the_limit_is_checked_before_the_balance(sql: Ledger) -> None:
    other = f"{sql.account}-to"
    await sql.grant(10)
    await _limits(sql, sql.account, spend_limit_day=20)
    assert (await _transfer_refusal(sql, other, 30, now=10))[0] == (
        failures.SpendLimitExceeded.sqlstate
    )
    assert (await _transfer_refusal(sql, other, 15, now=10))[0] == (
        failures.InsufficientCredits.sqlstate
    )


async def test_a_replay_answers_the_original_after_its_room_was_used_up(sql: Ledger) -> None:
    other = f"{sql.account}-to"
    await sql.grant(1_000)
    await _limits(sql, sql.account, spend_limit_day=100)
    first = await _transfer(sql, other, 60, now=10, key="the-key")
    await sql.reserve(40, now=11)
    assert await _transfer(sql, other, 60, now=12, key="the-key") == first
    assert await _transfers_out(sql) == 1
    assert await _used(sql, sql.account, now=12) == {"day": 100}
