"""`python -m service.admin`: what an operator needs to look after the ledger.

    reconcile       check every invariant; print each discrepancy; exit 1 if any
    account ID      an account's balance, grants and recent reservations
    migrate         bring the schema to the newest revision

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
from pathlib import Path

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

import jsonlog
from service.ledger import limits
from service.ledger.model import GrantLot, GrantSource, ReservationStatus
from service.ledger.validation import ACCOUNT_ID_PATTERN
from service.settings import CLOCK_ERROR_MAX_SECONDS_DEFAULT, DEV_DIR, DEVELOPMENT
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
    args = parser.parse_args(argv)

    if args.command == "migrate":
        return run_migrate()
    url, _embedded = resolve_url("CREDITS_DATABASE_URL")
    if args.command == "reconcile":
        return asyncio.run(run_reconcile(url))
    return asyncio.run(show_account(url, args.account_id))


if __name__ == "__main__":
    sys.exit(main())
