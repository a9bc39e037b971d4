"""The client's prices against the real server: set_price, list_prices, price_history,
reserves and holds priced by quantity, confirms by quantity, and the price failures as
their classes."""

import asyncio
import datetime
from pathlib import Path

import pytest

from credits_client import (
    CreditsClient,
    InvalidRequest,
    Price,
    PriceNotFound,
    ReservationNotPriced,
    ReservationStatus,
    SyncCreditsClient,
)
from tests.client.conftest import funded, mtls_options
from tests.support import RunningServer, new_id


async def _prices(client: CreditsClient) -> dict[str, Price]:
    return {price.job_type: price async for price in client.list_prices(page_size=1)}


async def test_set_list_and_history(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    job_type = new_id("story")
    first = await ops_client.set_price(job_type, 25, unit="story", reason="launch")
    assert (first.unit_price, first.unit, first.set_by, first.reason) == (
        25,
        "story",
        "ops",
        "launch",
    )
    assert not first.retired
    # Paged one by one: the iteration follows every page.
    assert (await _prices(backend_client))[job_type] == first
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    second = await ops_client.set_price(job_type, 30, unit="story", effective_at=later)
    assert (await _prices(backend_client))[job_type].version == first.version
    at_then = {p.job_type: p async for p in backend_client.list_prices(at=later)}
    assert at_then[job_type] == second
    history = [p async for p in ops_client.price_history(job_type)]
    assert history == [second, first]


async def test_a_priced_reserve_and_a_confirm_by_quantity(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    job_type = new_id("book_page")
    price = await ops_client.set_price(job_type, 12, unit="page")
    account = await funded(ops_client, 1000)
    reserved = await backend_client.reserve(account, job_type=job_type, quantity=3)
    assert (reserved.amount, reserved.price_version, reserved.unit_price, reserved.quantity) == (
        36,
        price.version,
        12,
        3,
    )
    await ops_client.set_price(job_type, 99, unit="page")
    again = await backend_client.reserve(
        account, job_type=job_type, quantity=3, idempotency_key=reserved.idempotency_key
    )
    assert again == reserved
    confirmed = await backend_client.confirm(account, reserved.reservation_id, quantity=2)
    assert (confirmed.confirmed_amount, confirmed.returned_amount) == (24, 12)


async def test_a_priced_hold_captures_a_quantity(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    job_type = new_id("image")
    await ops_client.set_price(job_type, 500, unit="image")
    account = await funded(ops_client, 5000)
    async with backend_client.hold(account, job_type=job_type, quantity=4) as hold:
        assert hold.reservation.amount == 2000
        hold.capture_quantity(3)
    assert hold.settled is not None
    assert (hold.settled.status, hold.settled.confirmed_amount) == (
        ReservationStatus.CONFIRMED,
        1500,
    )


async def test_a_hold_by_amount_cannot_capture_a_quantity(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 100)
    async with backend_client.hold(account, 10) as hold:
        with pytest.raises(ValueError, match="priced by quantity"):
            hold.capture_quantity(1)


async def test_the_price_failures_raise_their_classes(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    account = await funded(ops_client, 100)
    with pytest.raises(PriceNotFound):
        await backend_client.reserve(account, job_type=new_id("never_priced"), quantity=1)
    held = await backend_client.reserve(account, 10)
    with pytest.raises(ReservationNotPriced):
        await backend_client.confirm(account, held.reservation_id, quantity=1)
    with pytest.raises(InvalidRequest):
        await ops_client.set_price(new_id("story"), 0, unit="story")
    retired = await ops_client.set_price(new_id("story"), retire=True)
    assert retired.retired
    assert retired.unit_price == 0


async def test_amount_or_quantity_is_checked_before_sending(
    backend_client: CreditsClient,
) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await backend_client.reserve("acct", 10, job_type="story", quantity=1)
    with pytest.raises(ValueError, match="exactly one"):
        await backend_client.reserve("acct")
    with pytest.raises(ValueError, match="at most one"):
        await backend_client.confirm("acct", "r", 10, quantity=1)


async def test_the_blocking_client_lists_prices(credits_server: RunningServer, pki: Path) -> None:
    def job() -> None:
        with SyncCreditsClient(credits_server.address, **mtls_options(pki, "ops")) as client:
            price = client.set_price(new_id("tokens_1k"), 3, unit="1k tokens")
            assert price in list(client.list_prices())
            assert list(client.price_history(price.job_type)) == [price]

    # Off the event loop the server runs on.
    await asyncio.to_thread(job)
