"""The client at work: fund an account, run a paid job under `hold()` with one
idempotency key per attempt (the first attempt fails, the second is paid), read the
balance and the usage, and catch a typed error.

With `make run` running, from the project's root: `python -m credits_client.example`
(`--help` for the address, the certificates' folder and the account). Run it again: the
job's attempts are already settled, so nothing is reserved or spent a second time.
"""

import argparse
import asyncio

from credits_client import (
    CreditsClient,
    InsufficientCredits,
    JobAlreadySettled,
    ReservationStatus,
)

# A story job pays at most this much; it is charged ten per page it renders.
STORY_CREDITS_MAX = 300
CREDITS_PER_PAGE = 10
# A job is given up after this many failed attempts.
ATTEMPTS_MAX = 3


class RenderFailed(Exception):
    pass


async def render(attempt: int) -> list[str]:
    """The expensive work the credits pay for; its first attempt fails, to show a retry."""
    if attempt == 1:
        raise RenderFailed("the renderer crashed")
    return ["page 1", "page 2", "page 3"]


async def run_story(client: CreditsClient, account: str, job_id: str) -> None:
    """Runs the job until an attempt is paid. An idempotency key names one attempt: a
    process restarted halfway walks the same keys again, skips the attempts that
    already ended (JobAlreadySettled, raised before the body runs), and picks up the
    one still in progress."""
    for attempt in range(1, ATTEMPTS_MAX + 1):
        key = f"story:{account}:{job_id}:attempt:{attempt}"
        try:
            async with client.hold(
                account, STORY_CREDITS_MAX, job_type="story", job_id=job_id, idempotency_key=key
            ) as hold:
                pages = await render(attempt)  # an exception here: Release, then re-raised
                hold.capture(len(pages) * CREDITS_PER_PAGE)  # without capture(): all 300
            settled = hold.settled  # the reservation as the exit left it
            print(f"{job_id} attempt {attempt} {settled and settled.status}")
            return
        except RenderFailed:
            print(f"{job_id} attempt {attempt} failed and was released")
        except JobAlreadySettled as settled:
            print(f"{job_id} attempt {attempt} already {settled.status}")
            if settled.status is ReservationStatus.CONFIRMED:
                return  # done and paid for by an earlier run: not run again


async def main(target: str, pki: str, account: str) -> None:
    def client_of(caller: str) -> CreditsClient:  # mTLS as a development caller
        return CreditsClient(
            target,
            ca_file=f"{pki}/ca.pem",
            cert_file=f"{pki}/{caller}.pem",
            key_file=f"{pki}/{caller}.key",
        )

    async with client_of("ops") as ops, client_of("backend") as client:
        # One key for the purchase: the account is funded once, however often this runs.
        await ops.grant(account, 1000, source="purchase", idempotency_key=f"purchase:{account}:1")
        await run_story(client, account, "job-7")
        balance = await client.balance(account)
        print("available", balance.available, "reserved", balance.reserved)
        async for use in client.usage(account):  # every page, newest first
            print(use.job_id, use.status, use.amount, use.confirmed_amount)
        try:
            await client.reserve(account, 10**9, job_id="job-8")
        except InsufficientCredits as error:
            print(error.reason, "request", error.request_id, "key", error.idempotency_key)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m credits_client.example")
    parser.add_argument("--target", default="127.0.0.1:50051", help="the service's address")
    parser.add_argument("--pki", default=".dev/pki", help="make run's development certificates")
    parser.add_argument("--account", default="acct_py")
    return parser.parse_args()


if __name__ == "__main__":
    options = arguments()
    asyncio.run(main(options.target, options.pki, options.account))
