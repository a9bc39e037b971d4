"""The server-side package table: which credit package costs what, and grants how much.

Checkout metadata only *names* a package; the price and the number of units come from
here, so a tampered or stale session can never set its own amount. A refund names its
package only if its charge is marked (gateway.events.PURCHASE_MARK_KEY); otherwise the
charge's amount and currency must find it, so every package has a price of its own:
(price, currency) is unique across the table, checked at load.

A package whose price changes must keep its old entry under a new name (it can no longer
be bought at the old price, but its refunds still have to find it).
"""

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# ISO 4217 codes as Stripe spells them: three lowercase letters.
CURRENCY_PATTERN = re.compile(r"[a-z]{3}")
# Stripe's own ceiling for an amount is 99,999,999 minor units; anything above is a typo.
PRICE_MINOR_UNITS_MAX = 99_999_999
# The service decides the real maximum per grant; this only keeps int64 far away.
GRANT_UNITS_MAX = 10**15
PACKAGES_MAX = 1000
TABLE_FILE_BYTES_MAX = 256 * 1024

# What `make run` writes to `.dev/credit-packages.toml` (docs/operations.md, "Settings").
# Never a fallback: the gateway reads its table only from the file its settings name.
DEVELOPMENT_TABLE_TOML = """\
# Credit packages sold through Stripe Checkout.
# price: what the customer pays, in the currency's smallest unit (cents for usd);
# units: the credit units granted. (price, currency) must be unique.

[packages.credits_1000]
price = 1000
currency = "usd"
units = 1000

[packages.credits_5000]
price = 5000
currency = "usd"
units = 5500
"""


class PackageTableError(ValueError):
    """The package table is missing, malformed or ambiguous; the gateway must not start."""


@dataclass(frozen=True)
class Package:
    name: str
    price_minor_units: int
    currency: str
    units: int


@dataclass(frozen=True)
class PackageTable:
    by_name: Mapping[str, Package]

    def named(self, name: str) -> Package | None:
        return self.by_name.get(name)

    def priced(self, amount_minor_units: int, currency: str) -> Package | None:
        for package in self.by_name.values():
            if package.price_minor_units == amount_minor_units and package.currency == currency:
                return package
        return None


def _positive_int(value: object, limit: int) -> int | None:
    # bool is an int in Python; `price = true` must not read as 1.
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit:
        return value
    return None


def _package(name: str, entry: object) -> Package:
    if not PACKAGE_NAME_PATTERN.fullmatch(name):
        raise PackageTableError(f"package name {name!r} is not 1-64 of [A-Za-z0-9_.-]")
    if not isinstance(entry, dict) or set(entry) != {"price", "currency", "units"}:
        raise PackageTableError(f"package {name}: needs exactly price, currency and units")
    price = _positive_int(entry["price"], PRICE_MINOR_UNITS_MAX)
    units = _positive_int(entry["units"], GRANT_UNITS_MAX)
    currency = entry["currency"]
    if price is None:
        raise PackageTableError(
            f"package {name}: price must be an integer in 1..{PRICE_MINOR_UNITS_MAX}"
        )
    if units is None:
        raise PackageTableError(f"package {name}: units must be an integer in 1..{GRANT_UNITS_MAX}")
    if not isinstance(currency, str) or not CURRENCY_PATTERN.fullmatch(currency):
        raise PackageTableError(f"package {name}: currency must be three lowercase letters")
    return Package(name, price, currency, units)


def parse_table(text: str) -> PackageTable:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PackageTableError(f"not valid TOML: {error}") from None
    entries = document.get("packages")
    if set(document) != {"packages"} or not isinstance(entries, dict) or not entries:
        raise PackageTableError("expected one [packages.<name>] table per package, at least one")
    if len(entries) > PACKAGES_MAX:
        raise PackageTableError(f"more than {PACKAGES_MAX} packages")
    packages = [_package(name, entry) for name, entry in entries.items()]
    prices: dict[tuple[int, str], str] = {}
    for package in packages:
        key = (package.price_minor_units, package.currency)
        if key in prices:
            raise PackageTableError(
                f"packages {prices[key]} and {package.name} have the same price; refunds "
                "find their package by price, so each price must be unique"
            )
        prices[key] = package.name
    return PackageTable({package.name: package for package in packages})


def load_table(path: Path) -> PackageTable:
    with path.open("rb") as file:
        raw = file.read(TABLE_FILE_BYTES_MAX + 1)
    if len(raw) > TABLE_FILE_BYTES_MAX:
        raise PackageTableError(f"larger than {TABLE_FILE_BYTES_MAX} bytes")
    try:
        return parse_table(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PackageTableError("not UTF-8") from None


def write_development_table(path: Path) -> None:
    """Write the development table once; an operator's edits are kept."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEVELOPMENT_TABLE_TOML, encoding="utf-8")
