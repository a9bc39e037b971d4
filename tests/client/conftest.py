"""Fixtures of the client's tests: `credits_client` clients of the development callers
against the session's real server (mTLS with the development certificates), and a
factory for clients with other options or of other servers."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits_client import CreditsClient
from tests.support import RunningServer, new_id

ClientFactory = Callable[..., CreditsClient]


def mtls_options(pki: Path, caller: str) -> dict[str, Any]:
    """The TLS files of a development caller, as CreditsClient takes them."""
    return {
        "ca_file": pki / "ca.pem",
        "cert_file": pki / f"{caller}.pem",
        "key_file": pki / f"{caller}.key",
    }


@pytest.fixture
async def make_client(credits_server: RunningServer, pki: Path) -> AsyncIterator[ClientFactory]:
    """make_client(caller, address=<the session's server>, **CreditsClient options);
    every client made is closed after the test."""
    made: list[CreditsClient] = []

    def make(caller: str, address: str | None = None, **options: Any) -> CreditsClient:
        client = CreditsClient(
            address or credits_server.address, **(mtls_options(pki, caller) | options)
        )
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()


@pytest.fixture(scope="session")
async def ops_client(credits_server: RunningServer, pki: Path) -> AsyncIterator[CreditsClient]:
    """Every RPC (the development `ops` caller)."""
    async with CreditsClient(credits_server.address, **mtls_options(pki, "ops")) as client:
        yield client


@pytest.fixture(scope="session")
async def backend_client(credits_server: RunningServer, pki: Path) -> AsyncIterator[CreditsClient]:
    """Reserve, Confirm, Release, GetBalance, ListUsage."""
    async with CreditsClient(credits_server.address, **mtls_options(pki, "backend")) as client:
        yield client


async def funded(ops_client: CreditsClient, amount: int) -> str:
    """A new account holding `amount` credits of one purchase."""
    account = new_id()
    await ops_client.grant(account, amount, source="purchase")
    return account


class LockedAccount:
    """Holds the account's row lock, so that every write of the account waits inside
    PostgreSQL until the lock is released: a service that does not answer in time."""

    def __init__(self, engine: AsyncEngine, account: str) -> None:
        self._engine, self._account = engine, account

    async def __aenter__(self) -> None:
        self._connection = await self._engine.connect()
        await self._connection.execution_options(isolation_level="READ COMMITTED")
        self._transaction = await self._connection.begin()
        await self._connection.execute(
            text("SELECT 1 FROM accounts WHERE account_id = :a FOR UPDATE"), {"a": self._account}
        )

    async def __aexit__(self, *exc: object) -> None:
        await self._transaction.rollback()
        await self._connection.close()
