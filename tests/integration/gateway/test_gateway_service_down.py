"""The service goes away and comes back on the same address: while it is down Stripe
is told to retry (5xx), and the retried delivery grants exactly once."""

import asyncio
from pathlib import Path

import httpx

from tests.integration.gateway.deliveries import (
    BalanceReader,
    Purchase,
    start_gateway,
)
from tests.support import free_port, start_server

RECOVERY_SECONDS_MAX = 15.0
RETRY_PAUSE_SECONDS = 0.2


async def test_while_the_service_is_down_deliveries_are_5xx_then_granted_once(
    database_url: str, pki: Path, http: httpx.AsyncClient, balance: BalanceReader
) -> None:
    port = free_port()
    purchase = Purchase()
    completed = purchase.event("checkout.session.completed")
    succeeded = purchase.event("checkout.session.async_payment_succeeded")
    service = await start_server(database_url, pki, port)
    try:
        gateway = await start_gateway(service.address, pki)
    except BaseException:
        await service.stop()
        raise
    try:
        await service.stop()

        for body in (completed, succeeded, purchase.event("charge.refunded")):
            response = await gateway.post(http, body)
            assert response.status_code == 503
            assert response.json() == {"error": "temporarily unavailable, retry later"}
        assert await balance(purchase.account) == 0

        service = await start_server(database_url, pki, port)
        statuses = []
        for _ in range(int(RECOVERY_SECONDS_MAX / RETRY_PAUSE_SECONDS)):
            statuses.append((await gateway.post(http, completed)).status_code)
            if statuses[-1] == 200:
                break
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}

        assert (await gateway.post(http, succeeded)).status_code == 200
        assert (await gateway.post(http, completed)).status_code == 200
        assert await balance(purchase.account) == 1000
    finally:
        await gateway.stop()
        await service.stop()
