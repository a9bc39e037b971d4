"""The README's "Calling the service from Python" examples run as printed, in a process
of their own, against a real server: only the address, the certificates' folder and the
account are swapped for the test's, and the output is what the README says."""

import asyncio
import re
import sys
from pathlib import Path

from tests.support import RunningServer, new_id

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Calling the service from Python"
EXAMPLE_SECONDS_MAX = 60.0


def examples() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


async def run(code: str, server: RunningServer, pki: Path, account: str) -> list[str]:
    for documented, actual in (
        ('"127.0.0.1:50051"', f'"{server.address}"'),
        ('PKI = ".dev/pki"', f'PKI = "{pki}"'),
        ('"acct_py"', f'"{account}"'),
    ):
        assert documented in code
        code = code.replace(documented, actual)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), EXAMPLE_SECONDS_MAX)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines()


async def test_the_readme_examples_work_as_printed(
    credits_server: RunningServer, pki: Path
) -> None:
    asynchronous, synchronous = examples()
    account = new_id()

    first = await run(asynchronous, credits_server, pki, account)
    again = await run(asynchronous, credits_server, pki, account)
    sync = await run(synchronous, credits_server, pki, account)

    assert first[:2] == ["available 970 reserved 0", "job-7 confirmed 300 30"]
    assert re.fullmatch(r"INSUFFICIENT_CREDITS request [0-9a-f]{32} key \S+", first[2])
    assert len(first) == 3
    assert again[0] == "available 940 reserved 0"  # granted once, spent twice
    assert sync == ["available 840"]
