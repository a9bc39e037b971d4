"""Write the migration of a rule change: only the ledger functions whose definition in
service/store/sql/ledger.sql differs from what the newest migration leaves in a database
(docs/architecture.md, "Changing a rule").

Usage: python -m scripts.sqlmigration NAME [--message TEXT] [--source FILE] [--versions DIR]

It starts a scratch embedded PostgreSQL, migrates it to head, and compares each
function's `pg_get_functiondef` there with the one the source defines (the source is
applied inside a transaction that is rolled back). The new revision applies the
definitions PostgreSQL printed for the source, so a database it migrates matches the
source exactly, which tests/sql/test_functions_match_source.py checks.
"""

import argparse
import asyncio
import datetime
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pgserver
from alembic.config import Config
from alembic.script import ScriptDirectory

from service.store.database import ALEMBIC_INI, migrate

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "service" / "store" / "sql" / "ledger.sql"
VERSIONS = ROOT / "migrations" / "versions"
SERVICE_ROLE = "credits_service"
REVISION_DIGITS = 4
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,59}$")
DOCSTRING_CHARS_MAX = 88

# Every ledger function, in the order it was created (the source's order once the source
# has been applied to a schema without them).
DEFINITIONS = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS signature,
       p.oid::regprocedure::text AS procedure,
       pg_get_function_result(p.oid) AS result,
       p.prorettype = 'trigger'::regtype AS is_trigger,
       pg_get_functiondef(p.oid) AS definition
  FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'credits\\_%'
 ORDER BY p.oid
"""
# The source creates its functions with CREATE OR REPLACE: dropping the migrated ones
# first makes it create every one afresh, so a function the source no longer has, or
# whose result or parameter names changed, shows as such. CASCADE takes the triggers
# with it; the source creates them again and the transaction is rolled back anyway.
DROP_ALL = """
DO $$
DECLARE f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'credits\\_%'
  LOOP
    EXECUTE format('DROP FUNCTION %s CASCADE', f);
  END LOOP;
END $$"""


@dataclass(frozen=True)
class Function:
    signature: str  # name and parameters with their names: what CREATE OR REPLACE keeps
    procedure: str  # name and parameter types: what DROP and GRANT name
    result: str
    is_trigger: bool
    definition: str
    position: int  # order of creation: a SQL-language body needs what it calls to exist

    def replace(self) -> str:
        return f"{self.definition.rstrip()};"

    def create(self) -> str:
        if self.is_trigger:
            return self.replace()
        # A new function is executable by the service's role only (as in 0001 and 0002).
        return (
            f"{self.replace()}\nREVOKE ALL ON FUNCTION {self.procedure} FROM PUBLIC;"
            f"\nGRANT EXECUTE ON FUNCTION {self.procedure} TO {SERVICE_ROLE};"
        )

    def drop(self) -> str:
        return f"DROP FUNCTION {self.procedure};"


@dataclass(frozen=True)
class Change:
    """One function that differs: `old` as migrated (None: new), `new` as in the source
    (None: removed)."""

    old: Function | None
    new: Function | None

    @property
    def in_place(self) -> bool:
        """Whether CREATE OR REPLACE can change it: a result type or a parameter name
        that changes needs DROP and CREATE."""
        return self.old is not None and self.new is not None and self.old.result == self.new.result


@dataclass(frozen=True)
class Plan:
    """The functions that differ between a migrated database and the source."""

    changes: tuple[Change, ...]

    @property
    def summary(self) -> list[str]:
        """One line per function: its name and whether it is new, changed or removed."""
        lines = []
        for change in self.changes:
            function = change.new or change.old
            assert function is not None
            kind = "new" if change.old is None else "removed" if change.new is None else "changed"
            lines.append(f"{function.signature.split('(')[0]} ({kind})")
        return sorted(lines)

    def upgrade_sql(self) -> str:
        return _script(self._steps(self.changes, to_new=True))

    def downgrade_sql(self) -> str:
        return _script(self._steps(self.changes, to_new=False))

    @staticmethod
    def _steps(changes: tuple[Change, ...], *, to_new: bool) -> list[str]:
        pairs = [
            (c.old, c.new, c.in_place) if to_new else (c.new, c.old, c.in_place) for c in changes
        ]
        # Drops first: a function whose parameter names changed keeps its procedure.
        drops = [gone.drop() for gone, _, in_place in pairs if gone and not in_place]
        made = sorted(
            ((target, in_place) for _, target, in_place in pairs if target),
            key=lambda pair: pair[0].position,
        )
        creates = [t.replace() if in_place else t.create() for t, in_place in made]
        return drops + creates


def _script(statements: list[str]) -> str:
    header = (
        "-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql:"
        " regenerate, do not edit.\n"
    )
    return header + "\n\n".join(statements) + "\n"


async def _definitions(conn: asyncpg.Connection) -> dict[str, Function]:
    rows = await conn.fetch(DEFINITIONS)
    return {r["signature"]: Function(**dict(r), position=i) for i, r in enumerate(rows)}


async def plan(conn: asyncpg.Connection, source_sql: str) -> Plan:
    """Compare the functions of the database `conn` is connected to (migrated to head)
    with those `source_sql` defines; the database is left as it was."""
    migrated = await _definitions(conn)
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(DROP_ALL)
        await conn.execute(source_sql)
        from_source = await _definitions(conn)
    finally:
        await transaction.rollback()
    changes = [
        Change(migrated.get(s), new)
        for s, new in from_source.items()
        if s not in migrated or migrated[s].definition != new.definition
    ]
    changes += [Change(old, None) for s, old in migrated.items() if s not in from_source]
    return Plan(tuple(changes))


MIGRATION_TEMPLATE = '''"""{message}

Written by `python -m scripts.sqlmigration`: the ledger functions whose definition in
service/store/sql/ledger.sql differs from {down_revision}'s, and nothing else:
{functions}
Upgrade: {stem}.sql; downgrade: {stem}.down.sql.

Revision ID: {revision}
Revises: {down_revision}
Create Date: {created}
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op
from sqlalchemy.util import await_only

UPGRADE_SQL = Path(__file__).with_suffix(".sql")
DOWNGRADE_SQL = Path(__file__).with_suffix(".down.sql")
revision: str = "{revision}"
down_revision: str | None = "{down_revision}"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _execute_script(path: Path) -> None:
    # Several statements in one go: asyncpg runs those only outside a prepared statement.
    await_only(op.get_bind().connection.driver_connection.execute(path.read_text()))


def upgrade() -> None:
    _execute_script(UPGRADE_SQL)


def downgrade() -> None:
    _execute_script(DOWNGRADE_SQL)
'''


def write_migration(
    changes: Plan,
    name: str,
    revision: str,
    down_revision: str,
    versions: Path,
    *,
    message: str = "",
) -> list[Path]:
    """Write revision `revision` (after `down_revision`) of `changes` into `versions`:
    the Alembic script and its two SQL files. The paths written."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"a migration name is lowercase words joined by _: {name!r}")
    stem = f"{revision}_{name}"
    first_line = message or name.replace("_", " ").capitalize() + "."
    script = MIGRATION_TEMPLATE.format(
        message="\n".join(textwrap.wrap(first_line, DOCSTRING_CHARS_MAX)),
        functions="".join(f"- {line}\n" for line in changes.summary),
        stem=stem,
        revision=revision,
        down_revision=down_revision,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
    )
    paths = [versions / f"{stem}.py", versions / f"{stem}.sql", versions / f"{stem}.down.sql"]
    for path, text in zip(
        paths, (script, changes.upgrade_sql(), changes.downgrade_sql()), strict=True
    ):
        path.write_text(text)
    return paths


def head_revision() -> str:
    head = ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()
    if head is None:
        raise SystemExit("no migrations to start from")
    return head


def next_revision(head: str) -> str:
    return str(int(head) + 1).zfill(REVISION_DIGITS)


async def _plan_at(url: str, source_sql: str) -> Plan:
    conn = await asyncpg.connect(url)
    try:
        return await plan(conn, source_sql)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="what the change does, lowercase_with_underscores")
    parser.add_argument("--message", default="", help="the migration's first docstring line")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the SQL source to compare")
    parser.add_argument("--versions", type=Path, default=VERSIONS, help="where to write it")
    args = parser.parse_args(argv)
    head = head_revision()
    with tempfile.TemporaryDirectory(prefix="sqlmigration-") as scratch:
        server = pgserver.get_server(Path(scratch) / "pgdata", cleanup_mode="delete")
        try:
            url = str(server.get_uri())
            migrate(url)
            changes = asyncio.run(_plan_at(url, args.source.read_text()))
        finally:
            server.cleanup()
    if not changes.changes:
        print(f"the source's functions are those of revision {head}: nothing to write")
        return 0
    for path in write_migration(
        changes, args.name, next_revision(head), head, args.versions, message=args.message
    ):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
