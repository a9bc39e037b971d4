"""The shell sessions of the README and the operator's guide (docs/operations.md) work as
written: each block is run by bash against a real server, with only what points at
`make run` (its address, `.dev/`) and the account id replaced, so that a renamed field or
a changed output breaks this test."""

import asyncio
import os
import re
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from scripts.devrun import DEV_PRICES_TOML
from service import admin
from tests.integration.test_ratelimit_redis import RedisProcess
from tests.service_process import ServiceProcess, production_env
from tests.support import RunningServer, free_port, new_id, start_server

REPOSITORY = Path(__file__).resolve().parents[2]
README = REPOSITORY / "README.md"
OPERATIONS = REPOSITORY / "docs" / "operations.md"
MAKE_RUN_ADDRESS = "127.0.0.1:50051"
SESSION_TIMEOUT_SECONDS = 120.0
# The default on a machine of several cores: a supervisor and its workers.
PROCESSES = 2


def shell_block(document: Path, heading: str) -> str:
    """The first ```sh block under the heading `heading` of `document`."""
    text = document.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found is not None, f"no sh block under {heading} in {document.name}"
    return found.group(1)


async def run(
    script: str, replacements: dict[str, str], env: Mapping[str, str] | None = None
) -> str:
    """Run `script` with bash -e (any failing command fails it); its stdout. `env`: the
    CREDITS_ settings it runs with, instead of the test's."""
    for old, new in replacements.items():
        script = script.replace(old, new)
    scrubbed = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPOSITORY,
        env=None if env is None else {**scrubbed, **env},
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def dev_dir(tmp_path: Path) -> Path:
    """What `make run` writes under `.dev/`: the PKI, the callers file, the API keys."""
    ensure_dev_pki(tmp_path / "pki")
    ensure_dev_callers(tmp_path / "callers.toml")
    return tmp_path


def replacements(server: RunningServer, dev_dir: Path) -> dict[str, str]:
    return {MAKE_RUN_ADDRESS: server.address, ".dev/": f"{dev_dir}/", "acct_42": new_id()}


@pytest.fixture
async def mtls_server(database_url: str, dev_dir: Path) -> AsyncIterator[RunningServer]:
    # The prices `make run` seeds, which the tour reserves by quantity.
    prices = dev_dir / "prices.toml"
    prices.write_text(DEV_PRICES_TOML)
    await admin.load_prices(database_url, admin.read_prices_file(prices), only_unpriced=True)
    server = await start_server(
        database_url, dev_dir / "pki", CREDITS_CALLERS_FILE=str(dev_dir / "callers.toml")
    )
    try:
        yield server
    finally:
        await server.stop()


async def test_the_grpcurl_session(mtls_server: RunningServer, dev_dir: Path) -> None:
    output = await run(
        shell_block(README, "## Try it with grpcurl"), replacements(mtls_server, dev_dir)
    )
    assert '"reservation_id":' in output
    assert '"status": "RESERVATION_STATUS_CONFIRMED"' in output
    assert '"available": "800"' in output
    assert '"overrun_amount": "30"' in output
    assert '"unit_price": "12"' in output
    assert '"quantity": "3"' in output
    assert '"status": "SERVING"' in output


async def test_the_grpcurl_session_in_tls_mode(database_url: str, dev_dir: Path) -> None:
    server = await start_server(
        database_url,
        dev_dir / "pki",
        CREDITS_AUTH_MODE="tls",
        CREDITS_CALLERS_FILE=str(dev_dir / "callers.toml"),
    )
    try:
        output = await run(
            shell_block(OPERATIONS, "### grpcurl in tls mode"), replacements(server, dev_dir)
        )
    finally:
        await server.stop()
    assert "credits.v1.CreditsService" in output


def callers_reloaded_by(worker: int) -> Callable[[dict[str, Any]], bool]:
    def matches(entry: dict[str, Any]) -> bool:
        return (
            entry.get("msg") == "reloaded"
            and entry.get("file") == "CREDITS_CALLERS_FILE"
            and entry.get("worker") == worker
        )

    return matches


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess(free_port())
    server.start()
    yield server
    server.stop()


async def test_adding_a_caller(database_url: str, dev_dir: Path, redis: RedisProcess) -> None:
    """`scripts.devpki issue`, `make reload` and the call with the new certificate, against
    `python -m service` as `make run` starts it: a supervisor and its workers, the
    supervisor named in `.dev/service.pid`."""
    script = shell_block(OPERATIONS, "### Add a caller").replace(
        "scripts.devpki issue billing", f"scripts.devpki issue billing --dev-dir {dev_dir}"
    )
    issue_and_reload, reload_line, call = script.partition("make reload")
    _, _, call = call.partition("\n")
    env = production_env(
        database_url,
        dev_dir / "pki",
        free_port(),
        CREDITS_CALLERS_FILE=str(dev_dir / "callers.toml"),
        CREDITS_PID_FILE=str(dev_dir / "service.pid"),
        CREDITS_PROCESSES=str(PROCESSES),
        # Like make run's: several processes count rate limits together, in one Redis.
        CREDITS_REDIS_URL=redis.url,
    )
    with ServiceProcess(env) as service:
        where = {MAKE_RUN_ADDRESS: service.address, ".dev/": f"{dev_dir}/", "acct_42": new_id()}
        issued = await run(
            issue_and_reload + reload_line, where, env={"CREDITS_DEV_DIR": str(dev_dir)}
        )
        assert f"{dev_dir}/pki/billing.pem" in issued
        # The signal is sent when `make reload` returns; each worker rereads the file soon
        # after, and says so.
        for worker in range(PROCESSES):
            service.wait_for_log(callers_reloaded_by(worker))
        # Every worker: each new connection of grpcurl may land on any of them.
        for _ in range(PROCESSES * 2):
            assert '"account_id":' in await run(call, where)


async def test_the_admin_commands(database_dir: Path) -> None:
    """On the database of CREDITS_DEV_DIR, as on `make run`'s: account, reconcile, migrate."""
    output = await run(
        shell_block(OPERATIONS, "## The admin CLI"),
        {"acct_42": new_id()},
        env={"CREDITS_DEV_DIR": str(database_dir)},
    )
    assert "available 0, reserved 0" in output
    assert "discrepancies" in output
    assert "the development database is at the newest revision" in output
    assert "prices in effect" in output
