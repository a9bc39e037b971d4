"""Helpers the tests share: a production server on an ephemeral port, mTLS channels."""

import asyncio
import contextlib
import datetime
import socket
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2, credits_pb2_grpc
from scripts.devcallers import ensure_dev_callers
from service import settings
from service.app import assemble
from service.ledger.operations import Clock, utc_now
from service.rpc.server import Built, mark_serving
from service.store.postgres import PostgresStore


def free_port() -> int:
    """A port no process listens on now, for a process a test starts (never make run's)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


STOP_GRACE_SECONDS = 1.0
# The shared test server must not throttle concurrency tests (many Reserves on one
# account); the 50/second default is tested on a server of its own.
TEST_RESERVE_RATE_PER_ACCOUNT = "100000/second"
# A client deadline for every test call: a hung call fails the test instead of the run.
CALL_TIMEOUT_SECONDS = 30.0


class MovableClock:
    """The wall clock plus an offset that tests move forward, so that what time decides
    (expiry) is tested without sleeping. Time still flows, so that rows created one after
    the other keep their order."""

    def __init__(self) -> None:
        self._offset = datetime.timedelta()

    def __call__(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += datetime.timedelta(seconds=seconds)


@dataclass
class RunningServer:
    built: Built
    engine: AsyncEngine
    store: PostgresStore
    settings: settings.Settings

    @property
    def port(self) -> int:
        return self.built.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.built.port}"

    async def stop(self) -> None:
        await self.store.signals.aclose()
        await self.built.server.stop(grace=STOP_GRACE_SECONDS)
        await self.built.limiter.aclose()
        await self.engine.dispose()


def server_settings(database_url: str, pki: Path, port: int = 0, **env: str) -> settings.Settings:
    """Production settings (no development fallbacks) for a server on loopback, with the
    development callers (`<pki>/callers.toml`, written if missing)."""
    ensure_dev_callers(pki / "callers.toml")
    return settings.load(
        {
            "CREDITS_ENV": "production",
            "CREDITS_DATABASE_URL": database_url,
            "CREDITS_GRPC_ADDR": f"127.0.0.1:{port}",
            "CREDITS_TLS_CA_FILE": str(pki / "ca.pem"),
            "CREDITS_TLS_CERT_FILE": str(pki / "server.pem"),
            "CREDITS_TLS_KEY_FILE": str(pki / "server.key"),
            "CREDITS_CALLERS_FILE": str(pki / "callers.toml"),
            "CREDITS_RESERVE_RATE_PER_ACCOUNT": TEST_RESERVE_RATE_PER_ACCOUNT,
            "CREDITS_DB_POOL_SIZE": "8",
            **env,
        }
    )


async def start_server(
    database_url: str, pki: Path, port: int = 0, clock: Clock = utc_now, **env: str
) -> RunningServer:
    """The service as `python -m service` assembles it, serving on 127.0.0.1 (port 0: an
    ephemeral one), with `clock` as its one clock."""
    config = server_settings(database_url, pki, port, **env)
    engine, store, built = assemble(config, database_url, clock)
    await built.server.start()
    await mark_serving(built)
    return RunningServer(built, engine, store, config)


@contextlib.asynccontextmanager
async def child_process(*args: str, **options: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process started with `asyncio.create_subprocess_exec(*args, **options)` that is
    killed when the block ends, however it ends, unless the test stopped it already."""
    process = await asyncio.create_subprocess_exec(*args, **options)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            # communicate() drains the pipes, so that waiting cannot block on a full one.
            await process.communicate()


def open_channel(pki: Path, caller: str, address: str) -> grpc.aio.Channel:
    """An mTLS channel presenting `<pki>/<caller>.pem`."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{caller}.key").read_bytes(),
        certificate_chain=(pki / f"{caller}.pem").read_bytes(),
    )
    return grpc.aio.secure_channel(address, credentials)


def new_id(prefix: str = "acct") -> str:
    """A fresh account id or key, so that tests sharing one database never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def error_details(err: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest fields) of a failed call's rich status."""
    status = rpc_status.from_call(err)
    assert status is not None, "every failure carries a google.rpc.Status"
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "credits.v1"
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def other_database(url: str, name: str) -> str:
    """The URL of database `name` on the same server as `url`."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


async def funded_account(
    stub: credits_pb2_grpc.CreditsServiceStub, amount: int, account: str | None = None
) -> str:
    """A new account (or `account`) holding `amount` credits of one purchase."""
    account = account or new_id()
    request = credits_pb2.GrantRequest(
        account_id=account,
        amount=amount,
        source=credits_pb2.GRANT_SOURCE_PURCHASE,
        idempotency_key=new_id("grant"),
    )
    await stub.Grant(request, timeout=CALL_TIMEOUT_SECONDS)
    return account
