"""The issue's "done when", against `make run` on a fresh folder: the backend lists the
development prices; a Reserve of 3 `book_page` holds 3 x its price and shows the version;
a price raise leaves the replayed Reserve and the Confirm by quantity at the old price,
while a new Reserve pays the new one; the history shows both versions and who set them;
a restart keeps the price ops set (the seed only prices job types never priced)."""

import pytest

from credits_client import PriceNotFound, SyncCreditsClient
from tests.e2e.runner import DevRun


def _client(devrun: DevRun, caller: str) -> SyncCreditsClient:
    pki = devrun.dev_dir / "pki"
    return SyncCreditsClient(
        devrun.address,
        ca_file=pki / "ca.pem",
        cert_file=pki / f"{caller}.pem",
        key_file=pki / f"{caller}.key",
    )


def test_priced_reserves_against_make_run(devrun: DevRun) -> None:
    devrun.start()
    with _client(devrun, "backend") as backend, _client(devrun, "ops") as ops:
        prices = {p.job_type: (p.unit_price, p.unit) for p in backend.list_prices()}
        assert prices == {
            "story": (25, "story"),
            "book_page": (12, "page"),
            "image": (500, "image"),
            "tokens_1k": (3, "1k tokens"),
        }
        account = "acct_demo_prices"
        ops.grant(account, 1000, source="purchase", idempotency_key="prices-grant-1")
        first = backend.reserve(
            account, job_type="book_page", quantity=3, idempotency_key="prices-reserve-1"
        )
        assert (first.amount, first.unit_price, first.quantity) == (36, 12, 3)
        details = backend.get_reservation(account, first.reservation_id)
        assert details.reservation.price_version == first.price_version

        raised = ops.set_price("book_page", 15, unit="page", reason="paper costs")
        replayed = backend.reserve(
            account, job_type="book_page", quantity=3, idempotency_key="prices-reserve-1"
        )
        assert replayed == first
        second = backend.reserve(account, job_type="book_page", quantity=3)
        assert (second.amount, second.price_version) == (45, raised.version)
        confirmed = backend.confirm(account, first.reservation_id, quantity=3)
        assert confirmed.confirmed_amount == 36
        history = list(ops.price_history("book_page"))
        assert [(p.unit_price, p.set_by) for p in history] == [(15, "ops"), (12, "admin")]
        with pytest.raises(PriceNotFound):
            backend.reserve(account, job_type="no_such_job", quantity=1)
    assert devrun.stop() == 0

    devrun.start()
    with _client(devrun, "ops") as ops:
        assert [p.unit_price for p in ops.price_history("book_page")] == [15, 12]
    assert devrun.stop() == 0
