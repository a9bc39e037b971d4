"""A test that starts a process stops it, however the test ends."""

import asyncio
import os
import sys
from typing import Any

import pytest

from tests.support import child_process

SLEEPS_FOREVER = ("-c", "import time; time.sleep(3600)")
WRITES_FOREVER = ("-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)")
# Long enough for the child to start and, writing, to fill its pipe.
RUN_SECONDS = 0.2
# A kill that hangs fails the test instead of the run.
KILL_SECONDS_MAX = 30.0


class Failed(Exception):
    """A test failing while its process runs; carries the process."""


async def fail_while_running(*args: str, **options: Any) -> None:
    async with child_process(sys.executable, *args, **options) as process:
        await asyncio.sleep(RUN_SECONDS)
        raise Failed(process)


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_failing_block_kills_its_process() -> None:
    with pytest.raises(Failed) as failed:
        await fail_while_running(*SLEEPS_FOREVER)

    process: asyncio.subprocess.Process = failed.value.args[0]
    assert process.returncode is not None
    assert not running(process.pid)


async def test_a_process_with_a_full_pipe_is_killed_without_hanging() -> None:
    with pytest.raises(Failed) as failed:
        await asyncio.wait_for(
            fail_while_running(*WRITES_FOREVER, stdout=asyncio.subprocess.PIPE),
            timeout=KILL_SECONDS_MAX,
        )

    assert not running(failed.value.args[0].pid)


async def test_a_process_the_test_stopped_is_left_as_it_is() -> None:
    async with child_process(sys.executable, "-c", "pass") as process:
        assert await process.wait() == 0

    assert process.returncode == 0
