"""The shell sessions of the README and the operator's guide (docs/operations.md) work as
written: each block is run by bash against a real server, with only what points at
`make run` (its address, `.dev/`) and the account id replaced, so that a renamed field or
a changed output breaks this test."""

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import reload
from tests.support import RunningServer, new_id, start_server

REPOSITORY = Path(__file__).resolve().parents[2]
README = REPOSITORY / "README.md"
OPERATIONS = REPOSITORY / "docs" / "operations.md"
MAKE_RUN_ADDRESS = "127.0.0.1:50051"
SESSION_TIMEOUT_SECONDS = 120.0


def shell_block(document: Path, heading: str) -> str:
    """The first ```sh block under the heading `heading` of `document`."""
    text = document.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found is not None, f"no sh block under {heading} in {document.name}"
    return found.group(1)


async def run(script: str, replacements: dict[str, str]) -> str:
    """Run `script` with bash -e (any failing command fails it); its stdout."""
    for old, new in replacements.items():
        script = script.replace(old, new)
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPOSITORY,
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


async def test_adding_a_caller(mtls_server: RunningServer, dev_dir: Path) -> None:
    """`scripts.devpki issue`, then the call with the new certificate. The `pkill` line is
    left out (it would signal every service on the machine); this in-process server is
    reloaded directly, as SIGHUP does (tests/integration/test_rotation.py)."""
    script = shell_block(OPERATIONS, "### Add a caller").replace(
        "scripts.devpki issue billing", f"scripts.devpki issue billing --dev-dir {dev_dir}"
    )
    issue, _, call = script.partition("pkill -HUP")
    issued = await run(issue, replacements(mtls_server, dev_dir))
    assert f"{dev_dir}/pki/billing.pem" in issued
    assert reload.reload_callers(mtls_server.settings, mtls_server.built)
    _, _, call = call.partition("\n")
    assert '"account_id":' in await run(call, replacements(mtls_server, dev_dir))
