"""`python -m service.admin`: what an operator needs to look after the ledger.

    reconcile       check every invariant; print each discrepancy; exit 1 if any
    account ID      an account's balance, grants and recent reservations
    migrate         bring the schema to the newest revision
    prices load F   set the prices of a TOML file (below) that differ from those in
                    effect; a file loaded again changes nothing
    prices show     the prices in effect now

A prices file has one table per job type, e.g.

    [prices.book_page]
    unit_price = 12                 # credit units per unit
    unit = "page"                   # what one unit is, for people
    # effective_at = 2027-01-01T00:00:00Z   (optional; absent: now)
    # retire = true                 (instead of unit_price and unit)
    # reason = "why"                (optional; the file's top-level `reason` otherwise)

Versions it sets are audited as set by `admin`.

The database is `CREDITS_DATABASE_URL` (for migrate: `CREDITS_MIGRATION_DATABASE_URL`,
a role that owns the schema, else `CREDITS_DATABASE_URL`), or with
`CREDITS_ENV=development` and neither set, the embedded database under `.dev/`, which
migrate brings to the newest revision as its owner (as `make run` does on every start).
"""

import argparse
import asyncio
import datetime
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

import jsonlog
from service.ledger import limits
from service.ledger.commands import SetPriceCommand, WireTime
from service.ledger.failures import InvalidRequest
from service.ledger.model import GrantLot, GrantSource, Price, ReservationStatus
from service.ledger.operations import Ledger, Policy
from service.ledger.validation import ACCOUNT_ID_PATTERN
from service.settings import (
    AMOUNT_MAX_DEFAULT,
    CLOCK_ERROR_MAX_SECONDS_DEFAULT,
    DEV_DIR,
    DEVELOPMENT,
    RESERVATION_LIFETIME_MAX_SECONDS_DEFAULT,
)
from service.store import database, reconcile
from service.store.clock import DatabaseClock
from service.store.postgres import PostgresStore, sqlalchemy_url

RECENT_RESERVATIONS_MAX = 20
BACKSLASH = "\\"
# The account view lists every grant, fetched in pages of the API's largest size.
GRANTS_PAGE_SIZE = limits.PAGE_SIZE_MAX
# An operator's command waits as long as the database's statement timeout allows.
NO_DEADLINE = None
MIGRATION_URL_SETTINGS = ("CREDITS_MIGRATION_DATABASE_URL", "CREDITS_DATABASE_URL")
# PostgreSQL's insufficient_privilege: the role may not change the schema.
SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"
# Who the price versions this tool sets were set by, in their audit trail.
PRICES_SET_BY = "admin"
PRICES_PAGE_SIZE = limits.PAGE_SIZE_MAX
# The keys a job type's table in a prices file may have.
PRICE_ENTRY_KEYS = frozenset({"unit_price", "unit", "effective_at", "retire", "reason"})


def escaped(text: str) -> str:
    """`text` with every character a terminal would act on (C0, DEL, C1, Unicode's
    format and separator characters) written as its Python escape (ESC as \\x1b), and
    backslashes doubled so that an escape in the data cannot pass for one made here.
    What callers sent reaches this output; it must never drive the operator's terminal."""
    if text.isprintable() and BACKSLASH not in text:
        return text
    return "".join(
        c if c.isprintable() and c != BACKSLASH else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def show(line: str) -> None:
    """Print one line of operator output, escaped."""
    print(escaped(line))


def resolve_url(*names: str) -> tuple[str, database.Embedded | None]:
    for name in names:
        if os.environ.get(name):
            return os.environ[name], None
    if os.environ.get("CREDITS_ENV") == DEVELOPMENT:
        embedded = database.prepare_embedded(Path(os.environ.get("CREDITS_DEV_DIR", str(DEV_DIR))))
        return embedded.service_url, embedded
    raise SystemExit(f"set {' or '.join(names)} (or CREDITS_ENV=development for .dev/)")


def run_migrate() -> int:
    """Migrate; a database that refuses is one line on stderr and exit 1, not a stack."""
    url, embedded = resolve_url(*MIGRATION_URL_SETTINGS)
    if embedded is not None:
        # Starting the embedded database migrated it as its owner (the URL handed to the
        # service is its restricted role's, which may not).
        print("the development database is at the newest revision")
        return 0
    setting = next(name for name in MIGRATION_URL_SETTINGS if os.environ.get(name))
    try:
        database.migrate(url)
    except DBAPIError as exc:
        sqlstate = jsonlog.exception_fields(exc).get("sqlstate")
        if sqlstate == SQLSTATE_INSUFFICIENT_PRIVILEGE:
            print(
                f"migrate: permission denied: the role of {setting} may not change the schema;"
                " set CREDITS_MIGRATION_DATABASE_URL to the schema owner's URL",
                file=sys.stderr,
            )
        else:
            print(
                f"migrate: the database of {setting} refused: {type(exc.orig).__name__}"
                f" (SQLSTATE {sqlstate or 'unknown'})",
                file=sys.stderr,
            )
        return 1
    except OSError as exc:
        print(f"migrate: cannot reach the database of {setting}: {exc}", file=sys.stderr)
        return 1
    print("schema is at the newest revision")
    return 0


async def run_reconcile(url: str) -> int:
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with engine.connect() as conn:
            found = await reconcile.reconcile(conn)
    finally:
        await engine.dispose()
    for d in found:
        show(f"DISCREPANCY {d.invariant}: {d.subject}: {d.detail}")
    checked = len(reconcile.INVARIANTS)
    show(f"reconcile: {checked} invariants checked, {len(found)} discrepancies")
    return 1 if found else 0


async def show_account(url: str, account_id: str) -> int:
    if not ACCOUNT_ID_PATTERN.fullmatch(account_id):
        print("not a valid account id", file=sys.stderr)
        return 2
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        # The reads GetBalance, ListGrants and ListUsage answer with, at one moment: the
        # account settled first, expiry decided by expires_at.
        # Reading settles the account: by PostgreSQL's clock, as the service's instances
        # do, never by this machine's.
        clock = DatabaseClock(CLOCK_ERROR_MAX_SECONDS_DEFAULT)
        if not await clock.measure(engine):
            print("cannot read the database's clock", file=sys.stderr)
            return 1
        store, now = PostgresStore(engine), clock()
        balance = await store.balance(account_id, now, deadline=NO_DEADLINE)
        grants = await _all_grants(store, account_id, now)
        reservations = await store.usage(
            account_id, RECENT_RESERVATIONS_MAX, None, now, deadline=NO_DEADLINE
        )
    finally:
        await engine.dispose()
    show(f"account {account_id}: available {balance.available}, reserved {balance.reserved}")
    show(f"grants ({len(grants)}, in burn-down order):")
    for lot in grants:
        g = lot.grant
        show(
            f"  {g.grant_id} {GrantSource(g.source).name.lower():<12} original {g.original_amount}"
            f" remaining {g.remaining_amount} held {lot.held_amount} revoked {g.revoked_amount}"
            f" unrecovered {g.unrecovered_amount} expired {g.expired_amount}"
            f" priority {g.priority} expires {g.expires_at or 'never'}"
            f" ref {g.external_ref or '-'}"
        )
    show(f"recent reservations ({len(reservations)}, newest first):")
    for r in reservations:
        show(
            f"  {r.reservation_id} {ReservationStatus(r.status).name.lower():<9} amount {r.amount}"
            f" confirmed {r.confirmed_amount} {r.job_type or '-'}/{r.job_id or '-'}"
            f" created {r.created_at} expires {r.expires_at}"
            + (
                f" priced {r.quantity} x {r.unit_price} (version {r.price_version})"
                if r.price_version is not None
                else ""
            )
            + (f" reason {r.release_reason}" if r.release_reason else "")
        )
    return 0


async def _all_grants(
    store: PostgresStore, account_id: str, now: datetime.datetime
) -> list[GrantLot]:
    """Every grant of the account, finished ones included."""
    grants: list[GrantLot] = []
    while True:
        after = grants[-1].grant.grant_id if grants else None
        page = await store.grants(
            account_id, True, GRANTS_PAGE_SIZE, after, now, deadline=NO_DEADLINE
        )
        grants.extend(page)
        if len(page) < GRANTS_PAGE_SIZE:
            return grants


class PricesFileError(ValueError):
    """A prices file that cannot be loaded; nothing was set."""


@dataclass(frozen=True)
class PriceEntry:
    job_type: str
    unit_price: int
    unit: str
    effective_at: datetime.datetime | None
    retire: bool
    reason: str


def read_prices_file(path: Path) -> list[PriceEntry]:
    """The entries of a prices file, in job type order; PricesFileError naming the first
    thing wrong."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PricesFileError(f"{path}: {exc}") from exc
    default_reason = document.get("reason", "")
    tables = document.get("prices")
    if not isinstance(tables, dict) or not isinstance(default_reason, str):
        raise PricesFileError(f"{path}: needs a [prices.<job_type>] table per job type")
    return [_entry(path, name, table, default_reason) for name, table in sorted(tables.items())]


def _entry(path: Path, job_type: str, table: Any, default_reason: str) -> PriceEntry:
    where = f"{path}: [prices.{job_type}]"
    if not isinstance(table, dict) or not set(table) <= PRICE_ENTRY_KEYS:
        raise PricesFileError(f"{where}: only {', '.join(sorted(PRICE_ENTRY_KEYS))}")
    retire = table.get("retire", False)
    unit_price = table.get("unit_price", 0)
    unit, reason = table.get("unit", ""), table.get("reason", default_reason)
    effective_at = table.get("effective_at")
    # bool is an int to Python: `unit_price = true` is no price.
    if not isinstance(unit_price, int) or isinstance(unit_price, bool):
        raise PricesFileError(f"{where}: unit_price must be an integer")
    if not isinstance(retire, bool) or not isinstance(unit, str) or not isinstance(reason, str):
        raise PricesFileError(f"{where}: retire is true or false, unit and reason are strings")
    if effective_at is not None and not (
        isinstance(effective_at, datetime.datetime) and effective_at.utcoffset() is not None
    ):
        raise PricesFileError(f"{where}: effective_at must be a date-time with its offset")
    return PriceEntry(job_type, unit_price, unit, effective_at, retire, reason)


def _amount_max() -> int:
    """CREDITS_AMOUNT_MAX as the service reads it, which bounds a unit price too."""
    raw = os.environ.get("CREDITS_AMOUNT_MAX") or str(AMOUNT_MAX_DEFAULT)
    try:
        amount_max = int(raw)
    except ValueError:
        raise SystemExit("CREDITS_AMOUNT_MAX must be an integer") from None
    if not 0 < amount_max <= limits.AMOUNT_MAX_LIMIT:
        raise SystemExit(f"CREDITS_AMOUNT_MAX must be between 1 and {limits.AMOUNT_MAX_LIMIT}")
    return amount_max


def _same(price: Price | None, entry: PriceEntry) -> bool:
    if entry.retire:
        # A job type without a price in effect is as retired as one can be.
        return price is None
    return price is not None and (price.unit_price, price.unit) == (entry.unit_price, entry.unit)


async def _prices_at(store: PostgresStore, at: datetime.datetime) -> Mapping[str, Price]:
    prices: dict[str, Price] = {}
    after = None
    while True:
        page = await store.prices(at, PRICES_PAGE_SIZE, after, deadline=NO_DEADLINE)
        prices.update((price.job_type, price) for price in page)
        if len(page) < PRICES_PAGE_SIZE:
            return prices
        after = page[-1].version


async def load_prices(
    url: str, entries: list[PriceEntry], *, only_unpriced: bool = False
) -> list[Price]:
    """Sets each entry whose price differs from the one in effect at its effective_at
    (now when it has none), through the ledger's rules, as `admin`; the versions set.
    Entries already in effect are skipped, so loading a file again changes nothing.
    `only_unpriced` (a seed) skips every job type that has ever had a price: what
    someone set since is kept."""
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        # Versions are stamped by PostgreSQL's clock, as the service's instances stamp theirs.
        clock = DatabaseClock(CLOCK_ERROR_MAX_SECONDS_DEFAULT)
        if not await clock.measure(engine):
            raise SystemExit("cannot read the database's clock")
        store = PostgresStore(engine)
        policy = Policy(
            amount_max=_amount_max(),
            metadata_keys=frozenset(),
            reservation_lifetime_max=datetime.timedelta(
                seconds=RESERVATION_LIFETIME_MAX_SECONDS_DEFAULT
            ),
        )
        ledger = Ledger(store, policy, clock)
        now = clock()
        set_now: list[Price] = []
        for entry in entries:
            in_effect = await _prices_at(store, entry.effective_at or now)
            if _same(in_effect.get(entry.job_type), entry):
                continue
            if only_unpriced and await store.price_history(
                entry.job_type, 1, None, deadline=NO_DEADLINE
            ):
                continue
            command = SetPriceCommand(
                caller=PRICES_SET_BY,
                job_type=entry.job_type,
                unit_price=entry.unit_price,
                unit=entry.unit,
                effective_at=_wire(entry.effective_at),
                reason=entry.reason,
                retire=entry.retire,
            )
            try:
                set_now.append(await ledger.set_price(command, deadline=NO_DEADLINE))
            except InvalidRequest as exc:
                fields = ", ".join(f"{v.field} {v.description}" for v in exc.violations)
                raise PricesFileError(f"[prices.{entry.job_type}]: {fields}") from exc
        return set_now
    finally:
        await engine.dispose()


def _wire(moment: datetime.datetime | None) -> WireTime | None:
    if moment is None:
        return None
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    delta = moment - epoch
    whole = delta // datetime.timedelta(seconds=1)
    return WireTime(whole, (delta - datetime.timedelta(seconds=whole)).microseconds * 1000)


def _price_line(price: Price) -> str:
    what = "retired" if price.retired else f"{price.unit_price} per {price.unit}"
    return (
        f"  {price.job_type} {what} (version {price.version}, from {price.effective_at},"
        f" set by {price.set_by})"
    )


async def run_prices_load(url: str, path: Path) -> int:
    try:
        entries = read_prices_file(path)
        set_now = await load_prices(url, entries)
    except PricesFileError as exc:
        show(f"prices load: {exc}")
        return 2
    show(f"prices load: {len(set_now)} set, {len(entries) - len(set_now)} already in effect")
    for price in set_now:
        show(_price_line(price))
    return 0


async def run_prices_show(url: str) -> int:
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        clock = DatabaseClock(CLOCK_ERROR_MAX_SECONDS_DEFAULT)
        if not await clock.measure(engine):
            print("cannot read the database's clock", file=sys.stderr)
            return 1
        prices = await _prices_at(PostgresStore(engine), clock())
    finally:
        await engine.dispose()
    show(f"prices in effect ({len(prices)}):")
    for price in prices.values():
        show(_price_line(price))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("reconcile", help="check every invariant of the ledger")
    account = commands.add_parser("account", help="show an account")
    account.add_argument("account_id")
    commands.add_parser("migrate", help="bring the schema to the newest revision")
    prices = commands.add_parser("prices", help="the price list").add_subparsers(
        dest="prices_command", required=True
    )
    load = prices.add_parser("load", help="set the prices of a TOML file")
    load.add_argument("file", type=Path)
    prices.add_parser("show", help="the prices in effect now")
    args = parser.parse_args(argv)

    if args.command == "migrate":
        return run_migrate()
    url, _embedded = resolve_url("CREDITS_DATABASE_URL")
    if args.command == "reconcile":
        return asyncio.run(run_reconcile(url))
    if args.command == "prices":
        if args.prices_command == "load":
            return asyncio.run(run_prices_load(url, args.file))
        return asyncio.run(run_prices_show(url))
    return asyncio.run(show_account(url, args.account_id))


if __name__ == "__main__":
    sys.exit(main())
