"""The client's side of issue 19 against the real server: confirm above the hold
(`allow_overrun`, also through `hold.capture`), the overdraft debt on balances and
accounts, the new settings, and SpendLimitExceeded with the limit and its reset."""

import datetime

import pytest

from credits_client import (
    CaptureExceedsReservation,
    CreditsClient,
    EntryKind,
    InsufficientCredits,
    ReservationStatus,
    SpendLimitExceeded,
)
from tests.client.conftest import funded


async def test_confirm_above_the_hold_takes_the_extra(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 500)
    held = await backend_client.reserve(account, 100)
    with pytest.raises(CaptureExceedsReservation):
        await backend_client.confirm(account, held.reservation_id, 130)
    confirmed = await backend_client.confirm(account, held.reservation_id, 130, allow_overrun=True)
    assert (confirmed.confirmed_amount, confirmed.overrun_amount) == (130, 30)
    assert (await backend_client.balance(account)).available == 370
    kinds = [e.kind async for e in ops_client.list_entries(account, kinds=[EntryKind.OVERRUN])]
    assert kinds == [EntryKind.OVERRUN]


async def test_a_hold_captures_a_final_cost_above_what_it_held(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 500)
    async with backend_client.hold(account, 100) as hold:
        with pytest.raises(ValueError, match="capture"):
            hold.capture(101)
        hold.capture(140, allow_overrun=True)
    assert hold.settled is not None
    assert (hold.settled.status, hold.settled.overrun_amount) == (ReservationStatus.CONFIRMED, 40)
    assert (await backend_client.balance(account)).available == 360


async def test_a_refused_overrun_in_a_hold_leaves_the_reservation_to_confirm(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 100)
    with pytest.raises(InsufficientCredits):
        async with backend_client.hold(account, 100) as hold:
            hold.capture(101, allow_overrun=True)
    confirmed = await backend_client.confirm(account, hold.reservation_id)
    assert confirmed.confirmed_amount == 100


async def test_the_overdraft_debt_shows_and_the_next_grant_pays_it(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 10)
    changed = await ops_client.update_account_settings(account, overdraft_limit=50)
    assert changed.settings.overdraft_limit == 50
    held = await backend_client.reserve(account, 10)
    await backend_client.confirm(account, held.reservation_id, 60, allow_overrun=True)
    assert (await backend_client.balance(account)).debt == 50
    assert (await ops_client.get_account(account)).debt == 50
    await ops_client.grant(account, 70, source="purchase")
    balance = await backend_client.balance(account)
    assert (balance.available, balance.debt) == (20, 0)


async def test_a_spend_limit_refusal_names_the_limit_and_its_reset(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    await ops_client.update_account_settings(
        account, spend_limit_month=100, spend_limit_rolling=500, spend_limit_rolling_hours=24
    )
    held = await backend_client.reserve(account, 100)
    with pytest.raises(SpendLimitExceeded) as raised:
        await backend_client.reserve(account, 1)
    assert raised.value.limit == "month"
    now = held.created_at
    first_of_next = (now.replace(day=28) + datetime.timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    assert raised.value.resets_at == first_of_next
    account_now = await ops_client.get_account(account)
    assert [(u.limit, u.used) for u in account_now.spend_limits] == [
        ("month", 100),
        ("rolling", 100),
    ]
