"""What a killed embedded PostgreSQL leaves in its data folder is cleared before the next
start, and nothing else is touched: not a live process that reused the recorded pid, not
a socket folder outside the data folder and pgserver's runtime folder."""

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.store.database import clear_stale_server

STRANGER_SECONDS = 300


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not PostgreSQL."""
    process = subprocess.Popen(["sleep", str(STRANGER_SECONDS)])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def leftovers(pgdata: Path, pid: int, socket_dir: Path) -> None:
    pgdata.mkdir(parents=True)
    socket_dir.mkdir(parents=True, exist_ok=True)
    lines = [str(pid), str(pgdata), "1796314821", "5432", str(socket_dir), "", "1 2", "ready"]
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")
    (socket_dir / ".s.PGSQL.5432.lock").write_text(f"{pid}\n")
    (socket_dir / ".s.PGSQL.5432").touch()


def test_a_pid_file_naming_another_process_is_cleared(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    pgdata, runtime = tmp_path / "pgdata", tmp_path / "runtime"
    leftovers(pgdata, stranger.pid, runtime / "abc")
    (pgdata / ".handle_pids.json").write_text(json.dumps([stranger.pid, 2**22 + 1, os.getpid()]))

    clear_stale_server(pgdata, runtime)

    assert not (pgdata / "postmaster.pid").exists()
    assert list((runtime / "abc").iterdir()) == []
    assert stranger.poll() is None, "a process that is not PostgreSQL is left alone"
    # Handles of live processes stay; a pid that no process has is forgotten.
    assert json.loads((pgdata / ".handle_pids.json").read_text()) == [stranger.pid, os.getpid()]


def test_sockets_outside_the_known_folders_are_left_alone(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    pgdata, elsewhere = tmp_path / "pgdata", tmp_path / "shared-tmp"
    leftovers(pgdata, stranger.pid, elsewhere)
    (pgdata / ".s.PGSQL.5432.lock").write_text("1\n")

    clear_stale_server(pgdata, tmp_path / "runtime")

    assert not (pgdata / "postmaster.pid").exists()
    assert not (pgdata / ".s.PGSQL.5432.lock").exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == [".s.PGSQL.5432", ".s.PGSQL.5432.lock"]


def test_a_folder_without_leftovers_is_fine(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    clear_stale_server(tmp_path / "pgdata", tmp_path / "runtime")
    assert list((tmp_path / "pgdata").iterdir()) == []
