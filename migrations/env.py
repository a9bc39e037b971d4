"""Alembic environment: runs migrations on the async engine of the URL that
service.store.database.migrate put in the config's attributes."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.store.tables import metadata

config = context.config


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    engine = create_async_engine(config.attributes["sqlalchemy_url"])
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run `python -m service.admin migrate`")
asyncio.run(run_online())
