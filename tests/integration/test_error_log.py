"""An unexpected error is logged by what it is and where it happened, never by the data it
carried: the request id the client was given, the RPC, the caller, the error's class
and SQLSTATE, and no value of the statement's parameters (a database error's message
quotes them all: descriptions, metadata values, idempotency keys, account ids)."""

import io
import json
import logging
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.access.interceptors import REQUEST_ID_HEADER
from service.ops.logs import JsonFormatter
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import funded_account, new_id

# What a PL/pgSQL RAISE EXCEPTION without an ERRCODE raises.
RAISE_EXCEPTION_SQLSTATE = "P0001"
# What PostgreSQL sends to its sessions when it shuts down: the service answers UNAVAILABLE.
ADMIN_SHUTDOWN_SQLSTATE = "57P01"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the service's log handler writes while the test runs."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield written
    finally:
        root.removeHandler(handler)


async def refuse_reservations_of(
    admin_engine: AsyncEngine, account: str, name: str, sqlstate: str = RAISE_EXCEPTION_SQLSTATE
) -> None:
    """A real database error on a real statement: the insert of any reservation of
    `account` fails with `sqlstate` (only that account: the database is shared with
    other tests)."""
    async with admin_engine.begin() as conn:
        await conn.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                f" RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = '{sqlstate}';"
                " END $$"
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE INSERT ON reservations FOR EACH ROW"
                f" WHEN (NEW.account_id = '{account}') EXECUTE FUNCTION {name}()"
            )
        )


async def drop_refusal(admin_engine: AsyncEngine, name: str) -> None:
    async with admin_engine.begin() as conn:
        await conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON reservations"))
        await conn.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))


async def test_an_internal_error_logs_no_parameter_value(
    ops: Stub, backend: Stub, admin_engine: AsyncEngine, log_lines: io.StringIO
) -> None:
    account = await funded_account(ops, 100)
    secrets = {
        "description": new_id("private-description"),
        "metadata": new_id("private-trace"),
        "idempotency_key": new_id("private-key"),
        "job_id": new_id("private-job"),
    }
    request = pb.ReserveRequest(
        account_id=account,
        amount=10,
        idempotency_key=secrets["idempotency_key"],
        job_id=secrets["job_id"],
        description=secrets["description"],
        metadata={"trace_id": secrets["metadata"]},
    )
    refusal = new_id("test_refusal").replace("-", "_")
    await refuse_reservations_of(admin_engine, account, refusal)
    try:
        call = backend.Reserve(request, timeout=T)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        request_id = dict(await call.initial_metadata())[REQUEST_ID_HEADER]
    finally:
        await drop_refusal(admin_engine, refusal)

    assert failed.value.code() == grpc.StatusCode.INTERNAL
    written = log_lines.getvalue()
    lines = [json.loads(line) for line in written.splitlines()]
    (line,) = [x for x in lines if x["msg"] == "unexpected error"]
    assert line["request_id"] == request_id
    assert line["method"] == "/credits.v1.CreditsService/Reserve"
    assert line["caller"] == "backend"
    # The store runs its statements on the driver (service.store.postgres): its error, by class.
    assert line["exc_type"] == "asyncpg.exceptions.RaiseError"
    assert line["sqlstate"] == RAISE_EXCEPTION_SQLSTATE
    assert line["stack"]
    leaked = [name for name, value in {**secrets, "account": account}.items() if value in written]
    assert leaked == []
    assert "refused by a test trigger" not in written


async def test_an_unavailable_database_logs_one_line_without_a_stack(
    ops: Stub, backend: Stub, admin_engine: AsyncEngine, log_lines: io.StringIO
) -> None:
    """During an outage every call is UNAVAILABLE: each logs one short line (the error's
    class and its cause's), never a stack, so an outage does not flood the log."""
    account = await funded_account(ops, 100)
    request = pb.ReserveRequest(account_id=account, amount=10, idempotency_key=new_id("k"))
    refusal = new_id("test_refusal").replace("-", "_")
    await refuse_reservations_of(admin_engine, account, refusal, ADMIN_SHUTDOWN_SQLSTATE)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await backend.Reserve(request, timeout=T)
    finally:
        await drop_refusal(admin_engine, refusal)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    (line,) = [x for x in lines if x["msg"] == "dependency unavailable"]
    assert line["method"] == "/credits.v1.CreditsService/Reserve"
    assert line["error"] == "StoreUnavailable"
    assert line["cause"] == "AdminShutdownError"
    assert "stack" not in line
    assert "exc_type" not in line
