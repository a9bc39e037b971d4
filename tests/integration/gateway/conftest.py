"""Fixtures of the gateway's integration tests: one gateway for the session, in front
of the session's credits service, and the balance as the `ops` caller reads it."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from credits.v1 import credits_pb2, credits_pb2_grpc
from tests.integration.gateway.deliveries import (
    HTTP_TIMEOUT_SECONDS,
    BalanceReader,
    Purchase,
    RunningGateway,
    start_gateway,
)
from tests.support import RunningServer

BALANCE_TIMEOUT_SECONDS = 10.0
# Enough connections for the 50 concurrent deliveries of one test.
HTTP_CONNECTIONS_MAX = 100


@pytest.fixture(scope="session")
async def gateway_server(credits_server: RunningServer, pki: Path) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(credits_server.address, pki)
    yield running
    await running.stop()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=HTTP_CONNECTIONS_MAX)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, limits=limits) as client:
        yield client


@pytest.fixture(scope="session")
def balance(ops: credits_pb2_grpc.CreditsServiceStub) -> BalanceReader:
    """An account's available credits, read by the `ops` caller."""

    async def read(account: str) -> int:
        response = await ops.GetBalance(
            credits_pb2.GetBalanceRequest(account_id=account), timeout=BALANCE_TIMEOUT_SECONDS
        )
        return int(response.available)

    return read


@pytest.fixture
def purchase() -> Purchase:
    return Purchase()
