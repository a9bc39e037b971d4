"""watch_events through the client against the real server: typed events, resuming
after a cursor, the settings of balance alerts, and the expired cursor's error class."""

import datetime

import pytest

from credits_client import CreditsClient, Event, EventCursorExpired, EventType
from tests.client.conftest import ClientFactory
from tests.support import RunningServer, new_id


async def _take(client: CreditsClient, count: int, **options: object) -> list[Event]:
    got: list[Event] = []
    async for event in client.watch_events(**options):  # type: ignore[arg-type]
        got.append(event)
        if len(got) == count:
            break
    return got


async def test_watch_events_yields_typed_events_and_resumes_after_a_cursor(
    ops_client: CreditsClient,
) -> None:
    account = new_id()
    granted = await ops_client.grant(account, 100, source="purchase")
    held = await ops_client.reserve(account, 40)
    first, second = await _take(ops_client, 2, from_oldest=True, account_id=account)
    assert (first.type, first.grant_id, first.available_after) == (
        EventType.GRANTED,
        granted.grant_id,
        100,
    )
    assert first.occurred_at.tzinfo is datetime.UTC
    assert (second.type, second.reservation_id, second.amount) == (
        EventType.RESERVED,
        held.reservation_id,
        40,
    )
    await ops_client.release(account, held.reservation_id)
    (released,) = await _take(ops_client, 1, after_cursor=second.cursor, account_id=account)
    assert released.type is EventType.RELEASED


async def test_alert_thresholds_are_set_cleared_and_defaulted(
    ops_client: CreditsClient,
) -> None:
    account = new_id()
    own = await ops_client.update_account_settings(account, balance_alert_thresholds=[10, 50])
    assert own.settings.balance_alert_thresholds == (50, 10)
    none = await ops_client.update_account_settings(account, balance_alert_thresholds=[])
    assert none.settings.balance_alert_thresholds == ()
    default = await ops_client.update_account_settings(
        account, default_balance_alert_thresholds=True
    )
    assert default.settings.balance_alert_thresholds is None


async def test_an_expired_cursor_raises_its_class(
    make_client: ClientFactory, credits_server: RunningServer
) -> None:
    client = make_client("events")
    await credits_server.store.sweep_events(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    )
    with pytest.raises(EventCursorExpired):
        await _take(client, 1, after_cursor="1-1")


async def test_price_changes_are_typed_events_with_their_version(
    ops_client: CreditsClient,
) -> None:
    job_type = new_id("page")
    priced = await ops_client.set_price(job_type, 12, unit="page", reason="launch")
    retired = await ops_client.set_price(job_type, retire=True)
    mine: list[Event] = []
    async for event in ops_client.watch_events(
        from_oldest=True, types=[EventType.PRICE_SET, "price_retired"]
    ):
        assert event.price is not None
        assert event.account_id == ""
        if event.price.job_type == job_type:
            mine.append(event)
            if len(mine) == 2:
                break
    assert [(e.type, e.price) for e in mine] == [
        (EventType.PRICE_SET, priced),
        (EventType.PRICE_RETIRED, retired),
    ]
    assert mine[0].caller == "ops"
    assert priced.reason == "launch"


async def test_account_events_carry_no_price(ops_client: CreditsClient) -> None:
    account = new_id()
    await ops_client.grant(account, 5, source="purchase")
    (granted,) = await _take(ops_client, 1, from_oldest=True, account_id=account)
    assert granted.price is None
