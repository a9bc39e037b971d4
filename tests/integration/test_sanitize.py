"""Failures reach clients sanitized: an unexpected error deep in the store is
`internal error (ref <request id>)` and nothing else, its detail goes to the log under
that id; a database that cannot be reached is UNAVAILABLE with a plain message."""

import logging
import socket
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.access.interceptors import REQUEST_ID_HEADER
from service.ledger import failures
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, error_details, new_id, open_channel, start_server

PASSWORD = "hunter2-Sup3rSecret"
SQL = "SELECT remaining_amount FROM grants WHERE account_id = 'acct-victim'"


def leaked(err: grpc.aio.AioRpcError, *secrets: str) -> list[str]:
    """Which of `secrets` appear anywhere in what the client received."""
    received = [err.details() or ""]
    for _, value in err.trailing_metadata() or ():
        received.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return [s for s in secrets if any(s in text for text in received)]


async def test_a_fault_deep_in_the_store_is_internal_with_a_reference(
    credits_server: RunningServer,
    pki: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def faulty(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        # The driver's error carries SQL and a password.
        raise asyncpg.UndefinedTableError(f"password={PASSWORD} rejected in {SQL}")

    # The store's statements run on the driver's connections directly.
    monkeypatch.setattr(asyncpg.Connection, "fetchrow", faulty)
    async with open_channel(pki, "backend", credits_server.address) as channel:
        call = Stub(channel).GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
        with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        request_id = dict(await call.initial_metadata())[REQUEST_ID_HEADER]

    err = caught.value
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == f"internal error (ref {request_id})"
    assert error_details(err) == ("INTERNAL", [])
    assert leaked(err, PASSWORD, "SELECT", "grants", "Traceback", "UndefinedTableError") == []
    # The operator finds the error under the id the client was given (how it is written,
    # without the data it carries: test_error_log.py).
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert PASSWORD in str(logged[0].exc_info[1])


def dead_tcp_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe is closed.
    return f"postgresql://credits:{PASSWORD}@127.0.0.1:{port}/credits"


@pytest.mark.parametrize("where", ["tcp", "unix socket"])
async def test_an_unreachable_database_is_unavailable_with_a_plain_message(
    pki: Path, tmp_path: Path, where: str
) -> None:
    url = dead_tcp_url() if where == "tcp" else f"postgresql://credits@/credits?host={tmp_path}"
    server = await start_server(url, pki)
    try:
        async with open_channel(pki, "backend", server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await Stub(channel).GetBalance(pb.GetBalanceRequest(account_id=new_id()), timeout=T)
    finally:
        await server.stop()
    err = caught.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == failures.StoreUnavailable.message
    assert error_details(err)[0] == "DATABASE_UNAVAILABLE"
    assert leaked(err, PASSWORD, "127.0.0.1", str(tmp_path), "Connect", "Errno") == []
