"""Every RPC as a typed method against the real server: frozen dataclasses, ints, aware
datetimes, enums; idempotency keys generated when absent and shown on the result; a
repeat with the result's key returns the same object; usage follows every page."""

import dataclasses
import datetime

import pytest

from credits_client import (
    Balance,
    CreditsClient,
    EntryKind,
    Granted,
    GrantSource,
    Reservation,
    ReservationStatus,
    Reserved,
)
from tests.client.conftest import funded
from tests.support import new_id


def assert_aware(*moments: datetime.datetime | None) -> None:
    for moment in moments:
        assert moment is not None
        assert moment.utcoffset() == datetime.timedelta(0)


async def test_reserve_returns_a_typed_reservation_with_the_generated_key(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    reserved = await backend_client.reserve(
        account,
        300,
        ttl=datetime.timedelta(seconds=90),
        job_id="job-7",
        job_type="story",
        description="pages 1-3",
        metadata={"pages": "3"},
    )

    assert isinstance(reserved, Reserved)
    assert (reserved.account_id, reserved.amount, reserved.confirmed_amount) == (account, 300, 0)
    assert reserved.status is ReservationStatus.RESERVED
    assert (reserved.job_id, reserved.job_type, reserved.description) == (
        "job-7",
        "story",
        "pages 1-3",
    )
    assert_aware(reserved.created_at, reserved.expires_at)
    assert reserved.expires_at - reserved.created_at == datetime.timedelta(seconds=90)
    assert reserved.idempotency_key
    with pytest.raises(dataclasses.FrozenInstanceError):
        reserved.amount = 1  # type: ignore[misc]

    again = await backend_client.reserve(
        account,
        300,
        idempotency_key=reserved.idempotency_key,
        ttl=datetime.timedelta(seconds=90),
        job_id="job-7",
        job_type="story",
        description="pages 1-3",
        metadata={"pages": "3"},
    )
    assert again.reservation_id == reserved.reservation_id
    assert (await backend_client.balance(account)).reserved == 300


async def test_confirm_and_release_return_the_settled_reservation(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    first = await backend_client.reserve(account, 300)
    second = await backend_client.reserve(account, 200)

    confirmed = await backend_client.confirm(account, first.reservation_id, 100)
    released = await backend_client.release(account, second.reservation_id, "worker crashed")
    confirmed_again = await backend_client.confirm(account, first.reservation_id, 100)

    assert type(confirmed) is Reservation
    assert (confirmed.status, confirmed.confirmed_amount) == (ReservationStatus.CONFIRMED, 100)
    assert (released.status, released.confirmed_amount) == (ReservationStatus.RELEASED, 0)
    assert confirmed_again == confirmed
    assert await backend_client.balance(account) == Balance(account, 900, 0, 0, None)


async def test_confirm_without_an_amount_captures_everything(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    reserved = await backend_client.reserve(account, 300)

    confirmed = await backend_client.confirm(account, reserved.reservation_id)

    assert confirmed.confirmed_amount == 300


@pytest.mark.parametrize("source", ["promotion", GrantSource.PROMOTION])
async def test_grant_takes_a_plain_source_or_the_enum(
    ops_client: CreditsClient, source: str
) -> None:
    account = new_id()
    expires_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)

    granted = await ops_client.grant(
        account,
        500,
        source=source,
        expires_at=expires_at,
        priority=-1,
        external_ref=new_id("promo"),
        description="spring promotion",
    )

    assert isinstance(granted, Granted)
    assert granted.source is GrantSource.PROMOTION
    assert (granted.original_amount, granted.remaining_amount, granted.priority) == (500, 500, -1)
    assert granted.expires_at is not None
    assert abs(granted.expires_at - expires_at) < datetime.timedelta(milliseconds=1)
    assert_aware(granted.created_at, granted.expires_at)
    balance = await ops_client.balance(account)
    assert (balance.available, balance.expiring_amount) == (500, 500)
    assert balance.next_expiry == granted.expires_at


async def test_a_grant_repeated_with_its_key_grants_once(ops_client: CreditsClient) -> None:
    account = new_id()
    granted = await ops_client.grant(account, 500, source="purchase")

    again = await ops_client.grant(
        account, 500, source="purchase", idempotency_key=granted.idempotency_key
    )

    assert (granted.replayed, again.replayed) == (False, True)
    assert dataclasses.replace(again, replayed=False) == granted
    assert granted.expires_at is None
    assert (await ops_client.balance(account)).available == 500


async def test_an_unknown_source_is_refused_before_any_call(ops_client: CreditsClient) -> None:
    with pytest.raises(ValueError, match="bitcoin"):
        await ops_client.grant(new_id(), 500, source="bitcoin")


async def test_revoke_by_grant_id_and_by_external_ref(ops_client: CreditsClient) -> None:
    account = new_id()
    payment = new_id("pi")
    granted = await ops_client.grant(account, 1000, source="purchase", external_ref=payment)

    by_id = await ops_client.revoke(account, grant_id=granted.grant_id, amount=300)
    by_ref = await ops_client.revoke(
        external_ref=payment, amount=500, cumulative_series=new_id("refund")
    )

    assert (by_id.revoked_amount, by_id.unrecovered_amount) == (300, 0)
    assert by_id.grant.revoked_amount == 300
    assert by_ref.revoked_amount == 500
    assert by_ref.grant.remaining_amount == 200
    assert by_id.idempotency_key != by_ref.idempotency_key
    assert (await ops_client.balance(account)).available == 200


async def test_revoke_as_of_orders_a_series_claims_by_time(ops_client: CreditsClient) -> None:
    account, payment, series = new_id(), new_id("pi"), new_id("refund")
    await ops_client.grant(account, 1000, source="purchase", external_ref=payment)
    refunded_at = datetime.datetime(2026, 12, 1, 12, tzinfo=datetime.UTC)

    first = await ops_client.revoke(
        external_ref=payment, amount=400, cumulative_series=series, as_of=refunded_at
    )
    lowered = await ops_client.revoke(
        external_ref=payment,
        amount=100,
        cumulative_series=series,
        as_of=refunded_at + datetime.timedelta(minutes=5),
    )

    assert (first.revoked_amount, lowered.restored_amount) == (400, 300)
    assert (await ops_client.balance(account)).available == 900
    with pytest.raises(ValueError, match="timezone-aware"):
        await ops_client.revoke(
            external_ref=payment, cumulative_series=series, as_of=datetime.datetime(2026, 12, 1)
        )


async def test_revoke_names_exactly_one_grant(ops_client: CreditsClient) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await ops_client.revoke(new_id())
    with pytest.raises(ValueError, match="exactly one"):
        await ops_client.revoke(new_id(), grant_id="g", external_ref="r")


async def test_usage_follows_every_page_newest_first(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    made = [(await backend_client.reserve(account, 10 + i)).reservation_id for i in range(5)]

    listed = [r async for r in backend_client.usage(account, page_size=2)]

    assert [r.reservation_id for r in listed] == made[::-1]
    assert all(type(r) is Reservation for r in listed)
    assert [r async for r in backend_client.usage(new_id())] == []


async def test_list_grants_in_burn_down_order_with_what_is_held(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = new_id()
    late = await ops_client.grant(account, 100, source="purchase", priority=5)
    early = await ops_client.grant(account, 100, source="promotion", priority=1)
    await backend_client.reserve(account, 150)

    lots = [lot async for lot in ops_client.list_grants(account, page_size=1)]

    assert [lot.grant.grant_id for lot in lots] == [early.grant_id, late.grant_id]
    assert [(lot.grant.remaining_amount, lot.held_amount) for lot in lots] == [(0, 100), (50, 50)]


async def test_list_entries_is_the_statement_with_running_balances(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    reserved = await backend_client.reserve(account, 300)
    await backend_client.confirm(account, reserved.reservation_id, 200)

    entries = [e async for e in ops_client.list_entries(account, page_size=2)]
    reserves = [e async for e in ops_client.list_entries(account, kinds=["reserve"])]

    assert [(e.kind, e.amount, e.balance_after) for e in entries] == [
        (EntryKind.CONFIRM_RETURN, 100, 800),
        (EntryKind.RESERVE, -300, 700),
        (EntryKind.GRANT, 1000, 1000),
    ]
    assert entries[0].reservation_id == reserved.reservation_id
    assert_aware(*(e.created_at for e in entries))
    assert [e.entry_id for e in reserves] == [entries[1].entry_id]
    since = entries[0].created_at
    assert [e.entry_id async for e in ops_client.list_entries(account, since=since)] == [
        entries[0].entry_id
    ]
    with pytest.raises(ValueError, match="timezone-aware"):
        [e async for e in ops_client.list_entries(account, until=datetime.datetime(2030, 1, 1))]


async def test_get_and_extend_a_reservation(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    reserved = await backend_client.reserve(account, 300, ttl=datetime.timedelta(minutes=1))

    details = await backend_client.get_reservation(account, reserved.reservation_id)
    extended = await backend_client.extend_reservation(
        account, reserved.reservation_id, datetime.timedelta(hours=1)
    )

    assert details.reservation.reservation_id == reserved.reservation_id
    assert [(a.amount, a.returned_amount) for a in details.allocations] == [(300, 0)]
    assert extended.reservation.expires_at > reserved.expires_at + datetime.timedelta(minutes=58)
    assert extended.extendable_until == details.extendable_until
    assert_aware(details.extendable_until)


async def test_the_release_reason_is_on_the_released_reservation_wherever_it_is_read(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    released = await backend_client.reserve(account, 100)
    kept = await backend_client.reserve(account, 50)
    reason = "failed: WorkFailed\x1b[0m"  # as sent: escaping is the reader's job

    settled = await backend_client.release(account, released.reservation_id, reason=reason)
    details = await backend_client.get_reservation(account, released.reservation_id)
    listed = {r.reservation_id: r async for r in backend_client.usage(account)}

    assert settled.release_reason == reason
    assert details.reservation.release_reason == reason
    assert listed[released.reservation_id].release_reason == reason
    assert listed[kept.reservation_id].release_reason == ""
    assert kept.release_reason == ""


async def test_a_failed_holds_reason_is_read_back_through_the_client(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    with pytest.raises(LookupError):
        async with backend_client.hold(account, 300) as hold:
            raise LookupError

    assert hold.settled is not None
    assert hold.settled.release_reason == "failed: LookupError"
    details = await backend_client.get_reservation(account, hold.reservation_id)
    assert details.reservation.release_reason == "failed: LookupError"
