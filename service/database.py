"""The database's life outside the request path: the embedded development server,
migrations, and the least-privilege role the service connects as."""

import asyncio
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.store import sqlalchemy_url

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"
# The role the migrations grant exactly what the service needs (see the migrations).
SERVICE_ROLE = "credits_service"
# The login the embedded development database gives the service: a member of
# SERVICE_ROLE, so development runs with production's privileges, not as a superuser.
DEV_LOGIN = "credits_app"


@dataclass(frozen=True)
class Embedded:
    """The embedded development PostgreSQL; it stops when the last process that holds
    one of these exits."""

    server: Any
    admin_url: str
    service_url: str


def _embedded_server(dev_dir: Path) -> Any:
    dev_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime folder it does not need here; the
        # warning that XDG_RUNTIME_DIR is unset is noise on every start.
        warnings.filterwarnings("ignore", module="platformdirs")
        import pgserver  # noqa: PLC0415 (production never loads the embedded server)

        return pgserver.get_server(dev_dir.resolve() / "pgdata", cleanup_mode="stop")


def with_user(database_url: str, user: str) -> str:
    """The same database, logged in as `user` (no password: local socket only)."""
    parts = urllib.parse.urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def migrate(admin_url: str) -> None:
    """Bring the schema to the newest revision (run with a role that owns the schema)."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["sqlalchemy_url"] = sqlalchemy_url(admin_url)
    command.upgrade(config, "head")


async def ensure_dev_login(admin_url: str) -> str:
    """Create the development login of the service's role; the URL to connect as it."""
    engine = create_async_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": DEV_LOGIN}
            )
            if not exists:
                await conn.execute(text(f"CREATE ROLE {DEV_LOGIN} LOGIN IN ROLE {SERVICE_ROLE}"))
    finally:
        await engine.dispose()
    return with_user(admin_url, DEV_LOGIN)


def prepare_embedded(dev_dir: Path) -> Embedded:
    """Start (or join) the embedded database under `dev_dir`, migrate it and make sure
    the service's development login exists."""
    server = _embedded_server(dev_dir)
    admin_url = str(server.get_uri())
    migrate(admin_url)
    return Embedded(server, admin_url, asyncio.run(ensure_dev_login(admin_url)))
