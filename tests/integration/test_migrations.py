"""The migrations and service/store/tables.py describe the same schema (`alembic check`), and
the newest migration can be undone and redone."""

import asyncio
import uuid

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.database import ALEMBIC_INI
from service.store.postgres import sqlalchemy_url
from tests.support import other_database


def alembic_config(url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["sqlalchemy_url"] = sqlalchemy_url(url)
    return config


async def test_the_schema_matches_the_tables_module(admin_url: str) -> None:
    # Alembic runs its own event loop: give it a thread of its own.
    await asyncio.to_thread(command.check, alembic_config(admin_url))


async def test_migrations_go_down_and_up_again(admin_url: str, admin_engine: AsyncEngine) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    async with admin_engine.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    config = alembic_config(other_database(admin_url, name))
    await asyncio.to_thread(command.upgrade, config, "head")
    await asyncio.to_thread(command.downgrade, config, "base")
    await asyncio.to_thread(command.upgrade, config, "head")
    await asyncio.to_thread(command.check, config)
