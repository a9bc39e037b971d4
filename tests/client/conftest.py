"""Fixtures of the client's tests: `credits_client` clients of the development callers
against the session's real server (mTLS with the development certificates), and a
factory for clients with other options or of other servers."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

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
