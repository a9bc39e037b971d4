"""The package table: the only place prices and granted units come from."""

from pathlib import Path

import pytest

from gateway.packages import (
    DEVELOPMENT_TABLE_TOML,
    TABLE_FILE_BYTES_MAX,
    Package,
    PackageTableError,
    load_table,
    parse_table,
    write_development_table,
)


def test_the_development_table_is_that_of_the_spec() -> None:
    table = parse_table(DEVELOPMENT_TABLE_TOML)

    assert table.by_name == {
        "credits_1000": Package("credits_1000", 1000, "usd", 1000),
        "credits_5000": Package("credits_5000", 5000, "usd", 5500),
    }
    assert table.priced(5000, "usd") == table.named("credits_5000")
    assert table.priced(5000, "eur") is None
    assert table.named("credits_42") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "at least one"),
        ("[packages]", "at least one"),
        ("x = 1\n[packages.a]\nprice = 1\ncurrency = 'usd'\nunits = 1", "at least one"),
        ("[packages.a]\nprice = 1\ncurrency = 'usd'", "exactly price, currency and units"),
        ("[packages.a]\nprice = 1\ncurrency = 'usd'\nunits = 1\nbonus = 2", "exactly"),
        ("[packages.a]\nprice = 0\ncurrency = 'usd'\nunits = 1", "price"),
        ("[packages.a]\nprice = true\ncurrency = 'usd'\nunits = 1", "price"),
        ("[packages.a]\nprice = 10.5\ncurrency = 'usd'\nunits = 1", "price"),
        ("[packages.a]\nprice = 10\ncurrency = 'usd'\nunits = -1", "units"),
        ("[packages.a]\nprice = 10\ncurrency = 'USD'\nunits = 1", "currency"),
        ("[packages.a]\nprice = 10\ncurrency = 'dollars'\nunits = 1", "currency"),
        ("[packages.'a b']\nprice = 10\ncurrency = 'usd'\nunits = 1", "package name"),
        ("not toml [", "not valid TOML"),
        (
            "[packages.a]\nprice = 10\ncurrency = 'usd'\nunits = 1\n"
            "[packages.b]\nprice = 10\ncurrency = 'usd'\nunits = 2",
            "same price",
        ),
    ],
)
def test_a_table_that_could_mislead_is_refused(text: str, problem: str) -> None:
    with pytest.raises(PackageTableError, match=problem):
        parse_table(text)


def test_the_same_price_in_two_currencies_is_two_prices() -> None:
    table = parse_table(
        "[packages.a]\nprice = 10\ncurrency = 'usd'\nunits = 1\n"
        "[packages.b]\nprice = 10\ncurrency = 'eur'\nunits = 1\n"
    )

    assert table.priced(10, "eur") == Package("b", 10, "eur", 1)


def test_the_development_table_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "credit-packages.toml"
    write_development_table(path)
    assert load_table(path) == parse_table(DEVELOPMENT_TABLE_TOML)

    path.write_text("[packages.own]\nprice = 7\ncurrency = 'usd'\nunits = 7\n")
    write_development_table(path)
    assert set(load_table(path).by_name) == {"own"}


def test_an_oversized_table_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "packages.toml"
    path.write_text("#" * (TABLE_FILE_BYTES_MAX + 1))

    with pytest.raises(PackageTableError, match="larger than"):
        load_table(path)
