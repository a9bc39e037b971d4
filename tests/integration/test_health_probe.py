"""The health probe of the operator's guide (docs/operations.md) works verbatim: its
commands, run as written from a folder laid out like a checkout after `make run` (`.venv`,
`.dev/pki`), against a real server whose address replaces the default one, say SERVING
with exit 0, and NOT_SERVING with exit 1 when the service cannot serve."""

import asyncio
import os
import re
import shutil
from pathlib import Path

from service.rpc import health
from tests.support import RunningServer, child_process

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operations.md"
GUIDE_SECTION = "\n## Health probes\n"
DEFAULT_ADDRESS = "127.0.0.1:50051"
PROBE_SECONDS_MAX = 60.0


def guide_probe_commands() -> list[str]:
    """The shell commands of the guide's health-probe section, continuations joined."""
    section = GUIDE.read_text(encoding="utf-8").split(GUIDE_SECTION, 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the section shows its commands"
    joined = block.group(1).replace("\\\n", " ")
    commands = [line.split("#", 1)[0].strip() for line in joined.splitlines()]
    return [command for command in commands if command]


def checkout_like(folder: Path, pki: Path) -> Path:
    """`.venv` of this checkout and `.dev/pki` holding the test server's CA."""
    (folder / ".venv").symlink_to(REPO / ".venv")
    shutil.copytree(pki, folder / ".dev" / "pki")
    return folder


async def run_guide(commands: list[str], folder: Path, address: str) -> tuple[int, str]:
    """Each command in turn as the guide writes it, only the default address replaced;
    the exit code and output of the last one."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code, output = -1, b""
    for command in commands:
        async with child_process(
            "bash",
            "-c",
            command.replace(DEFAULT_ADDRESS, address),
            cwd=folder,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        ) as process:
            output, _ = await asyncio.wait_for(process.communicate(), PROBE_SECONDS_MAX)
        assert process.returncode is not None
        code = process.returncode
    return code, output.decode()


async def test_the_guide_probe_with_a_certificate_naming_no_caller(
    credits_server: RunningServer, pki: Path, tmp_path: Path
) -> None:
    commands = guide_probe_commands()
    assert any("service.probe" in command for command in commands)
    folder = checkout_like(tmp_path, pki)

    code, output = await run_guide(commands, folder, credits_server.address)
    assert (code, output.split()[-1]) == (0, "SERVING"), output
    probe_cert = folder / ".dev" / "pki" / "probe.pem"
    assert probe_cert.exists(), "the probe used a certificate of its own"

    await health.set_serving(credits_server.built.health, False)
    try:
        code, output = await run_guide(commands[-1:], folder, credits_server.address)
    finally:
        await health.set_serving(credits_server.built.health, True)
    assert (code, output.split()[-1]) == (1, "NOT_SERVING"), output
