"""The database's life outside the request path: the embedded development server,
migrations, and the least-privilege role the service connects as."""

import asyncio
import json
import signal
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.store.postgres import sqlalchemy_url

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"
# The role the migrations grant exactly what the service needs (see the migrations).
SERVICE_ROLE = "credits_service"
# The login the embedded development database gives the service: a member of
# SERVICE_ROLE, so development runs with production's privileges, not as a superuser.
DEV_LOGIN = "credits_app"
# What a killed PostgreSQL leaves in its data folder (or its socket folder, named on the
# fifth line of postmaster.pid), and pgserver's list of the processes using the server.
POSTMASTER_PID_FILE = "postmaster.pid"
POSTMASTER_PID_SOCKET_DIR_LINE = 4
SOCKET_LOCK_GLOB = ".s.PGSQL.*"
HANDLES_FILE = ".handle_pids.json"
# Orphaned backends of a killed server exit at once on SIGKILL; this is only a backstop.
ORPHAN_EXIT_SECONDS = 5.0


@dataclass(frozen=True)
class Embedded:
    """The embedded development PostgreSQL; it stops when the last process that holds
    one of these exits."""

    server: Any
    admin_url: str
    service_url: str


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        return _alive(psutil.Process(pid))
    except psutil.Error:
        return False


def _postmaster_lines(pgdata: Path) -> list[str]:
    try:
        return (pgdata / POSTMASTER_PID_FILE).read_text().splitlines()
    except OSError:
        return []


def _is_live_postmaster(pgdata: Path, lines: list[str]) -> bool:
    """Whether postmaster.pid names this folder's running server. pgserver trusts any
    process with the recorded pid, which after a kill -9 may be a zombie or an unrelated
    process that reused the pid."""
    try:
        process = psutil.Process(int(lines[0]))
        return _alive(process) and str(pgdata) in process.cmdline()
    except (ValueError, IndexError, psutil.Error):
        return False


def _orphans(pgdata: Path) -> list[psutil.Process]:
    """Backends of a dead postmaster: they still hold its shared memory, which stops a
    new server from starting. Every PostgreSQL process works in its data folder."""
    found = []
    for process in psutil.process_iter(["cwd"]):
        if process.info["cwd"] == str(pgdata) and _alive(process):
            found.append(process)
    return found


def clear_stale_server(pgdata: Path, runtime_dir: Path) -> None:
    """Remove what a server that is gone left behind (orphaned backends, postmaster.pid,
    socket lock files) and forget processes that no longer use it, so that the next
    start works after any stop, kill -9 of everything included. A live server is left
    alone: it is joined. Sockets are only removed from the data folder and from
    `runtime_dir`, where pgserver puts them when the data folder's path is too long."""
    lines = _postmaster_lines(pgdata)
    if not _is_live_postmaster(pgdata, lines):
        orphans = _orphans(pgdata)
        for orphan in orphans:
            orphan.send_signal(signal.SIGKILL)
        psutil.wait_procs(orphans, timeout=ORPHAN_EXIT_SECONDS)
        folders = {pgdata}
        if len(lines) > POSTMASTER_PID_SOCKET_DIR_LINE:
            socket_dir = Path(lines[POSTMASTER_PID_SOCKET_DIR_LINE])
            if socket_dir.is_relative_to(runtime_dir):
                folders.add(socket_dir)
        for folder in folders:
            for leftover in folder.glob(SOCKET_LOCK_GLOB):
                leftover.unlink(missing_ok=True)
        (pgdata / POSTMASTER_PID_FILE).unlink(missing_ok=True)
    handles = pgdata / HANDLES_FILE
    if handles.exists():
        # A handle of a killed process would keep the last real one from stopping the server.
        pids = json.loads(handles.read_text())
        handles.write_text(json.dumps([pid for pid in pids if _pid_alive(pid)]))


def _embedded_server(dev_dir: Path) -> Any:
    dev_dir.mkdir(parents=True, exist_ok=True)
    pgdata = dev_dir.resolve() / "pgdata"
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime folder it does not need here; the
        # warning that XDG_RUNTIME_DIR is unset is noise on every start.
        warnings.filterwarnings("ignore", module="platformdirs")
        import pgserver  # noqa: PLC0415 (production never loads the embedded server)

        if pgdata.exists():
            # pgserver's own inter-process lock: no other process starts or stops this
            # server while its leftovers are cleared.
            with pgserver.PostgresServer._lock:
                clear_stale_server(pgdata, pgserver.PostgresServer.runtime_path)
        return pgserver.get_server(pgdata, cleanup_mode="stop")


def with_user(database_url: str, user: str) -> str:
    """The same database, logged in as `user` (no password: local socket only)."""
    parts = urllib.parse.urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def migrate(admin_url: str) -> None:
    """Bring the schema to the newest revision (run with a role that owns the schema)."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["sqlalchemy_url"] = sqlalchemy_url(admin_url)
    command.upgrade(config, "head")


async def ensure_dev_login(admin_url: str) -> str:
    """Create the development login of the service's role; the URL to connect as it."""
    engine = create_async_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": DEV_LOGIN}
            )
            if not exists:
                await conn.execute(text(f"CREATE ROLE {DEV_LOGIN} LOGIN IN ROLE {SERVICE_ROLE}"))
    finally:
        await engine.dispose()
    return with_user(admin_url, DEV_LOGIN)


def prepare_embedded(dev_dir: Path) -> Embedded:
    """Start (or join) the embedded database under `dev_dir`, migrate it and make sure
    the service's development login exists."""
    server = _embedded_server(dev_dir)
    admin_url = str(server.get_uri())
    migrate(admin_url)
    return Embedded(server, admin_url, asyncio.run(ensure_dev_login(admin_url)))
