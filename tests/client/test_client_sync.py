"""`SyncCreditsClient` from plain threads against the real server: the same methods as
the asynchronous client (derived, not copied), `with client.hold(...)` confirming or
releasing, typed errors, and usage as an iterator."""

import asyncio
import inspect
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from credits_client import (
    CreditsClient,
    InsufficientCredits,
    JobAlreadySettled,
    ReservationStatus,
    SyncCreditsClient,
)
from tests.client.conftest import funded, mtls_options
from tests.support import RunningServer, new_id


class WorkFailed(Exception):
    pass


@pytest.fixture
def sync_backend(credits_server: RunningServer, pki: Path) -> Iterator[SyncCreditsClient]:
    with SyncCreditsClient(credits_server.address, **mtls_options(pki, "backend")) as client:
        yield client


def test_every_method_of_the_async_client_has_its_blocking_twin_derived_from_it() -> None:
    public = {
        name
        for name, member in inspect.getmembers(CreditsClient)
        if not name.startswith("_") and callable(member) and name != "close"
    }
    # Every RPC has a method (tests/unit/test_contract_coverage.py), and hold() besides.
    assert "hold" in public
    for name in public:
        # Wrapped, not rewritten: the blocking method runs the asynchronous one.
        assert getattr(SyncCreditsClient, name).__wrapped__ is getattr(CreditsClient, name)
    # The constructor is the one written out twice: its parameters must not drift.
    constructor = dict(inspect.signature(CreditsClient.__init__).parameters)
    sync_constructor = dict(inspect.signature(SyncCreditsClient.__init__).parameters)
    assert constructor.pop("target").annotation != sync_constructor.pop("target").annotation
    assert sync_constructor == constructor


async def test_a_sync_hold_confirms_what_was_captured(
    ops_client: CreditsClient, sync_backend: SyncCreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    def job() -> None:
        with sync_backend.hold(account, 300, job_type="image") as hold:
            assert sync_backend.balance(account).reserved == 300
            hold.capture(200)
        assert hold.settled is not None
        assert hold.settled.status is ReservationStatus.CONFIRMED

    await asyncio.to_thread(job)

    balance = await ops_client.balance(account)
    assert (balance.available, balance.reserved) == (800, 0)


async def test_a_sync_hold_releases_on_an_exception_and_reraises_it(
    ops_client: CreditsClient, sync_backend: SyncCreditsClient
) -> None:
    account = await funded(ops_client, 1000)

    def job() -> None:
        with sync_backend.hold(account, 300):
            raise WorkFailed

    with pytest.raises(WorkFailed):
        await asyncio.to_thread(job)

    balance = await ops_client.balance(account)
    assert (balance.available, balance.reserved) == (1000, 0)


async def test_a_sync_hold_refuses_the_key_of_a_finished_job_before_the_body_runs(
    ops_client: CreditsClient, sync_backend: SyncCreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    key = new_id("image")
    ran: list[str] = []

    def job() -> None:
        with sync_backend.hold(account, 300, idempotency_key=key):
            ran.append(key)

    await asyncio.to_thread(job)
    with pytest.raises(JobAlreadySettled) as refused:
        await asyncio.to_thread(job)

    assert ran == [key], "the second run's body never ran"
    assert refused.value.status is ReservationStatus.CONFIRMED
    balance = await ops_client.balance(account)
    assert (balance.available, balance.reserved) == (700, 0)


async def test_sync_calls_from_several_threads_raise_typed_errors_and_iterate(
    ops_client: CreditsClient, sync_backend: SyncCreditsClient
) -> None:
    account = await funded(ops_client, 1000)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            sync_backend.reserve(account, 100)
        except BaseException as error:
            errors.append(error)

    def jobs() -> None:
        threads = [threading.Thread(target=worker) for _ in range(11)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    await asyncio.to_thread(jobs)

    assert len(errors) == 1
    assert isinstance(errors[0], InsufficientCredits)
    listed = await asyncio.to_thread(lambda: list(sync_backend.usage(account, page_size=3)))
    assert len(listed) == 10
    assert {r.amount for r in listed} == {100}


def test_a_sync_client_refuses_an_open_channel() -> None:
    with pytest.raises(TypeError, match="address"):
        SyncCreditsClient(object())  # type: ignore[arg-type]


FORKED_WORKER = """
import os, signal, sys
from credits_client import SyncCreditsClient

address, pki, account, call_before_fork = sys.argv[1:]
client = SyncCreditsClient(
    address, ca_file=f"{pki}/ca.pem", cert_file=f"{pki}/backend.pem", key_file=f"{pki}/backend.key"
)
if call_before_fork == "yes":
    client.balance(account)
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # never outlive the test
    try:
        print("child", client.balance(account).available, flush=True)
    except RuntimeError as error:
        print("child refused:", "before the process forked" in str(error), flush=True)
    finally:
        os._exit(0)
os.waitpid(pid, 0)
print("parent", client.balance(account).available, flush=True)
client.close()
"""
FORKED_WORKER_SECONDS_MAX = 60.0


@pytest.mark.parametrize(
    ("call_before_fork", "child"), [("no", "child 1000"), ("yes", "child refused: True")]
)
async def test_a_client_made_before_a_fork_works_in_the_forked_worker(
    ops_client: CreditsClient,
    credits_server: RunningServer,
    pki: Path,
    call_before_fork: str,
    child: str,
) -> None:
    """A pre-forking pool (gunicorn, Celery) makes its client at import, in the parent;
    a client the parent has called is refused in the child instead of hanging there."""
    account = await funded(ops_client, 1000)
    args = (credits_server.address, str(pki), account, call_before_fork)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FORKED_WORKER, *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), FORKED_WORKER_SECONDS_MAX)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert out.decode().splitlines() == [child, "parent 1000"]
