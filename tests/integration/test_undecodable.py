"""Request bytes that do not parse (a string that is not UTF-8, a truncated message) are
refused like any invalid request, through the interceptors: INVALID_ARGUMENT with its
ErrorInfo and request id, after authentication and authorization, and nothing changes."""

from pathlib import Path

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.access.interceptors import REQUEST_ID_HEADER
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, error_details, new_id, open_channel

METHOD_PREFIX = "/credits.v1.CreditsService/"
# A GetBalanceRequest whose account_id (field 1, two bytes) is not UTF-8.
GET_BALANCE_NOT_UTF8 = bytes.fromhex("0a02fffe")
# Field 1 announces ten bytes and the message ends after two.
TRUNCATED = bytes.fromhex("0a0a6162")
PLACEHOLDER = "<<not-utf-8>>"


def not_utf8(request: pb.GrantRequest | pb.ReserveRequest) -> bytes:
    """The request's bytes with PLACEHOLDER (set in one string field) turned into bytes
    that are not UTF-8, the length unchanged."""
    encoded = request.SerializeToString()
    assert encoded.count(PLACEHOLDER.encode()) == 1
    return encoded.replace(PLACEHOLDER.encode(), b"\xff" * len(PLACEHOLDER))


async def call_raw(
    pki: Path, caller: str, server: RunningServer, rpc: str, data: bytes
) -> grpc.aio.AioRpcError:
    """Send `data` as the request of `rpc`, unparsed; the call must fail."""
    async with open_channel(pki, caller, server.address) as channel:
        # No serializers: the bytes go on the wire as they are.
        call = channel.unary_unary(METHOD_PREFIX + rpc)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(data, timeout=T)
    return failed.value


def assert_refused_as_invalid(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert error_details(err) == ("INVALID_REQUEST", ["request"])
    assert "DecodeError" not in (err.details() or "")
    (request_id,) = [v for k, v in err.initial_metadata() or () if k == REQUEST_ID_HEADER]
    assert request_id


@pytest.mark.parametrize("data", [GET_BALANCE_NOT_UTF8, TRUNCATED], ids=["not_utf8", "truncated"])
async def test_an_undecodable_request_is_an_invalid_argument(
    credits_server: RunningServer, pki: Path, data: bytes
) -> None:
    assert_refused_as_invalid(await call_raw(pki, "ops", credits_server, "GetBalance", data))


async def test_an_undecodable_grant_changes_nothing(
    credits_server: RunningServer, pki: Path, ops: Stub
) -> None:
    account = new_id()
    request = pb.GrantRequest(
        account_id=account,
        amount=100,
        source=pb.GRANT_SOURCE_PROMOTION,
        idempotency_key=new_id("grant"),
        description=PLACEHOLDER,
    )

    assert_refused_as_invalid(
        await call_raw(pki, "ops", credits_server, "Grant", not_utf8(request))
    )

    balance = await ops.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=T)
    assert balance.available == 0


async def test_an_undecodable_reserve_is_invalid_not_an_error_of_the_per_account_limit(
    credits_server: RunningServer, pki: Path
) -> None:
    # Reserve is also limited per account, which an undecodable request does not name.
    request = pb.ReserveRequest(account_id=PLACEHOLDER, amount=1, idempotency_key=new_id())

    err = await call_raw(pki, "backend", credits_server, "Reserve", not_utf8(request))

    assert_refused_as_invalid(err)


async def test_a_caller_without_the_rpc_is_refused_before_its_bytes_are_looked_at(
    credits_server: RunningServer, pki: Path
) -> None:
    err = await call_raw(pki, "backend", credits_server, "Grant", GET_BALANCE_NOT_UTF8)

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(err)[0] == "PERMISSION_DENIED"
