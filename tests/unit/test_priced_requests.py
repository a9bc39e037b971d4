"""The ledger's side of priced requests, with a store that only records what it is asked:
the idempotency fingerprint of a Reserve is over the request (so a replay after a price
change is the same request, and a Reserve by amount keeps the fingerprint it had before
prices existed), and the amount/quantity rules of Reserve, Confirm and SetPrice."""

import datetime
import uuid
from dataclasses import asdict
from typing import Any

import pytest

from service.ledger.commands import ConfirmCommand, ReserveCommand, SetPriceCommand, WireTime
from service.ledger.failures import InvalidRequest
from service.ledger.operations import Ledger, Policy, ReserveOrder
from service.ledger.validation import request_hash

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
POLICY = Policy(
    amount_max=1000, metadata_keys=frozenset(), reservation_lifetime_max=datetime.timedelta(days=7)
)


class RecordingStore:
    """Answers nothing; keeps what each call was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        async def record(*args: Any, **_: Any) -> None:
            self.calls.append((name, args))

        return record


def ledger_and_store() -> tuple[Ledger, RecordingStore]:
    store = RecordingStore()
    return Ledger(store, POLICY, lambda: NOW), store


async def reserve_order(cmd: ReserveCommand) -> ReserveOrder:
    ledger, store = ledger_and_store()
    await ledger.reserve(cmd, deadline=None)
    ((name, (order, _now)),) = store.calls
    assert name == "reserve"
    assert isinstance(order, ReserveOrder)
    return order


async def test_a_reserve_by_amount_keeps_its_fingerprint_of_before_prices() -> None:
    cmd = ReserveCommand(caller="backend", account_id="acct", amount=30, idempotency_key="k")
    order = await reserve_order(cmd)
    # The fields as they were before quantity existed: keys stored then still match.
    before = {k: v for k, v in asdict(cmd).items() if k != "quantity"}
    expected = request_hash("reserve", {**before, "ttl": 900.0, "caller": None})
    assert order.request_hash == expected


async def test_a_priced_reserve_is_fingerprinted_by_its_quantity() -> None:
    cmd = ReserveCommand(
        caller="backend",
        account_id="acct",
        amount=0,
        idempotency_key="k",
        job_type="book_page",
        quantity=3,
    )
    three = await reserve_order(cmd)
    four = await reserve_order(ReserveCommand(**{**asdict(cmd), "quantity": 4}))
    assert three.request_hash != four.request_hash
    assert three.amount_max == POLICY.amount_max


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"amount": 5}, ["amount"]),
        ({"job_type": ""}, ["job_type"]),
        ({"job_type": "book page"}, ["job_type"]),
        ({"quantity": -1}, ["quantity"]),
        ({"quantity": 1001}, ["quantity"]),
    ],
)
async def test_bad_priced_reserves(changes: dict[str, Any], fields: list[str]) -> None:
    cmd = ReserveCommand(
        caller="backend",
        account_id="acct",
        amount=0,
        idempotency_key="k",
        job_type="book_page",
        quantity=3,
    )
    ledger, store = ledger_and_store()
    with pytest.raises(InvalidRequest) as raised:
        await ledger.reserve(ReserveCommand(**{**asdict(cmd), **changes}), deadline=None)
    assert [v.field for v in raised.value.violations] == fields
    assert store.calls == []


@pytest.mark.parametrize(
    ("amount", "quantity", "fields"),
    [(5, 1, ["quantity"]), (None, 0, ["quantity"]), (None, 1001, ["quantity"])],
)
async def test_bad_confirms_by_quantity(
    amount: int | None, quantity: int, fields: list[str]
) -> None:
    ledger, store = ledger_and_store()
    cmd = ConfirmCommand("acct", str(uuid.uuid4()), amount=amount, quantity=quantity)
    with pytest.raises(InvalidRequest) as raised:
        await ledger.confirm(cmd, deadline=None)
    assert [v.field for v in raised.value.violations] == fields
    assert store.calls == []


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"unit_price": 0}, ["unit_price"]),
        ({"unit_price": 1001}, ["unit_price"]),
        ({"unit": ""}, ["unit"]),
        ({"unit": "pa\x1bge"}, ["unit"]),
        ({"job_type": "x" * 129}, ["job_type"]),
        ({"retire": True}, ["unit_price", "unit"]),
        ({"effective_at": WireTime(int(NOW.timestamp()) - 1, 0)}, ["effective_at"]),
    ],
)
async def test_bad_prices(changes: dict[str, Any], fields: list[str]) -> None:
    cmd = SetPriceCommand(caller="ops", job_type="book_page", unit_price=12, unit="page")
    ledger, store = ledger_and_store()
    with pytest.raises(InvalidRequest) as raised:
        await ledger.set_price(SetPriceCommand(**{**asdict(cmd), **changes}), deadline=None)
    assert [v.field for v in raised.value.violations] == fields
    assert store.calls == []


async def test_a_price_without_effective_at_takes_effect_at_the_ledgers_now() -> None:
    ledger, store = ledger_and_store()
    await ledger.set_price(
        SetPriceCommand(caller="ops", job_type="book_page", unit_price=12, unit="page"),
        deadline=None,
    )
    ((name, (order, now)),) = store.calls
    assert (name, order.effective_at, now, order.unit_price) == ("set_price", NOW, NOW, 12)
    retire = SetPriceCommand(caller="ops", job_type="book_page", retire=True)
    await ledger.set_price(retire, deadline=None)
    assert store.calls[-1][1][0].unit_price is None
