"""`python -m gateway.devsend` against a running gateway: a purchase, a refund and a
dispute of it, each one command, as a developer runs them against `make run`."""

import asyncio
import uuid
from pathlib import Path

import pytest

from gateway.devsend import main
from gateway.packages import write_development_table
from tests.integration.gateway.deliveries import SECRET, BalanceReader, RunningGateway


async def test_a_purchase_its_refund_and_its_dispute_are_one_command_each(
    gateway_server: RunningGateway,
    balance: BalanceReader,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_file, packages_file = tmp_path / "secret", tmp_path / "packages.toml"
    secret_file.write_text(SECRET + "\n")
    write_development_table(packages_file)
    account = f"acct_devsend_{uuid.uuid4().hex}"
    common = [
        "--account", account, "--package", "credits_1000",
        "--url", gateway_server.url + "/stripe/webhook",
        "--secret-file", str(secret_file), "--packages-file", str(packages_file),
    ]  # fmt: skip

    async def devsend(*options: str) -> int:
        # Blocking HTTP, off the event loop that serves the gateway.
        return await asyncio.to_thread(main, [*common, *options])

    assert await devsend() == 0
    assert await balance(account) == 1000
    assert await devsend("--refund", "400") == 0
    assert await balance(account) == 600
    assert await devsend("--dispute", "created") == 0
    assert await balance(account) == 0
    assert await devsend("--dispute", "won") == 0
    assert await balance(account) == 600
    assert "200 refund 400" in capsys.readouterr().out
