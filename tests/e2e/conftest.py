"""The runner of `make run`, started by each test in a temporary folder and stopped
whatever happens."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.runner import DevRun


@pytest.fixture
def devrun() -> Iterator[DevRun]:
    # Not under pytest's tmp_path: every pytest session that starts on this machine takes
    # group and other permissions off /tmp/pytest-of-<user>, and the embedded PostgreSQL,
    # which runs as its own user when the tests run as root, could no longer restart.
    folder = Path(tempfile.mkdtemp(prefix="credits-devrun-"))
    folder.chmod(0o755)
    run = DevRun(folder / "dev")
    try:
        yield run
    finally:
        if run.process is not None and run.process.poll() is None:
            run.stop()
        # Whatever a failed test left running (PostgreSQL included) dies here.
        run.kill_everything()
        shutil.rmtree(folder, ignore_errors=True)
