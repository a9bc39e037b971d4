"""`python -m service.admin prices load FILE` and `prices show` against the session's
database, with the server reading what the tool set: versions set by `admin`, a file
loaded again changing nothing, an edited file setting only what changed, and a bad file
setting nothing. Also the development price list `make run` seeds."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from scripts.devrun import DEV_PRICES_TOML
from service import admin
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import funded_account, new_id


async def _admin(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.admin", *args],
        env={**os.environ, "CREDITS_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _history(ops: Stub, job_type: str) -> list[pb.Price]:
    response: pb.ListPriceHistoryResponse = await ops.ListPriceHistory(
        pb.ListPriceHistoryRequest(job_type=job_type), timeout=T
    )
    return list(response.prices)


def _prices_file(path: Path, entries: dict[str, tuple[int, str]]) -> Path:
    path.write_text(
        'reason = "price review"\n'
        + "".join(
            f'[prices.{job_type}]\nunit_price = {price}\nunit = "{unit}"\n'
            for job_type, (price, unit) in entries.items()
        )
    )
    return path


async def test_load_sets_what_differs_and_only_that(
    ops: Stub, database_url: str, tmp_path: Path
) -> None:
    story, page = new_id("story"), new_id("book_page")
    prices = _prices_file(tmp_path / "prices.toml", {story: (25, "story"), page: (12, "page")})
    loaded = await _admin(database_url, "prices", "load", str(prices))
    assert loaded.returncode == 0, loaded.stderr
    assert "2 set, 0 already in effect" in loaded.stdout
    (story_price,) = await _history(ops, story)
    assert (story_price.unit_price, story_price.unit) == (25, "story")
    assert (story_price.set_by, story_price.reason) == ("admin", "price review")

    again = await _admin(database_url, "prices", "load", str(prices))
    assert "0 set, 2 already in effect" in again.stdout
    assert len(await _history(ops, story)) == 1

    _prices_file(prices, {story: (25, "story"), page: (15, "page")})
    edited = await _admin(database_url, "prices", "load", str(prices))
    assert "1 set, 1 already in effect" in edited.stdout
    assert [p.unit_price for p in await _history(ops, page)] == [15, 12]

    shown = await _admin(database_url, "prices", "show")
    assert f"{page} 15 per page" in shown.stdout


async def test_a_bad_file_sets_nothing_and_says_why(
    ops: Stub, database_url: str, tmp_path: Path
) -> None:
    job_type = new_id("story")
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[prices.{job_type}]\nunit_price = 0\nunit = "story"\n')
    refused = await _admin(database_url, "prices", "load", str(bad))
    assert refused.returncode == 2
    assert "unit_price" in refused.stdout
    assert await _history(ops, job_type) == []
    bad.write_text(f'[prices.{job_type}]\nunit_price = "25"\nunit = "story"\n')
    refused = await _admin(database_url, "prices", "load", str(bad))
    assert (refused.returncode, "must be an integer" in refused.stdout) == (2, True)


async def test_retire_in_a_file_retires(ops: Stub, database_url: str, tmp_path: Path) -> None:
    job_type = new_id("image")
    prices = _prices_file(tmp_path / "prices.toml", {job_type: (500, "image")})
    assert (await _admin(database_url, "prices", "load", str(prices))).returncode == 0
    prices.write_text(f"[prices.{job_type}]\nretire = true\n")
    assert (await _admin(database_url, "prices", "load", str(prices))).returncode == 0
    assert (await _admin(database_url, "prices", "load", str(prices))).returncode == 0
    assert [p.retired for p in await _history(ops, job_type)] == [True, False]


def test_the_development_price_list_is_the_issues(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(DEV_PRICES_TOML)
    entries = {e.job_type: (e.unit_price, e.unit) for e in admin.read_prices_file(path)}
    assert entries == {
        "story": (25, "story"),
        "book_page": (12, "page"),
        "image": (500, "image"),
        "tokens_1k": (3, "1k tokens"),
    }


async def test_the_account_view_shows_a_reservations_price(ops: Stub, database_url: str) -> None:
    job_type = new_id("book_page")
    price: pb.SetPriceResponse = await ops.SetPrice(
        pb.SetPriceRequest(job_type=job_type, unit_price=12, unit="page"), timeout=T
    )
    account = await funded_account(ops, 100)
    await ops.Reserve(
        pb.ReserveRequest(
            account_id=account, job_type=job_type, quantity=3, idempotency_key=new_id("key")
        ),
        timeout=T,
    )
    shown = await _admin(database_url, "account", account)
    assert f"priced 3 x 12 (version {price.price.version})" in shown.stdout
