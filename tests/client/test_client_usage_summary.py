"""get_usage_summary through the client: typed JobTypeUsage results, ints only."""

import datetime

from credits_client import CreditsClient, JobTypeUsage
from tests.client.conftest import funded
from tests.support import MovableClock, new_id


async def test_get_usage_summary_returns_typed_counts_per_job_type(
    ops_client: CreditsClient, backend_client: CreditsClient, clock: MovableClock
) -> None:
    account = await funded(ops_client, 1000)
    job_type = new_id("upscale")
    started = clock()
    first = await backend_client.reserve(account, 300, job_type=job_type)
    second = await backend_client.reserve(account, 200, job_type=job_type)
    await backend_client.confirm(account, first.reservation_id, 100)
    await backend_client.release(account, second.reservation_id)

    summary = await ops_client.get_usage_summary(
        started, clock() + datetime.timedelta(seconds=1), account_id=account
    )

    assert summary == [JobTypeUsage(job_type, 1, 1, 0, 100, 500)]
