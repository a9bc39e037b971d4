"""Account settings through the real server (README "The contract": GetAccount,
UpdateAccountSettings): one AccountSettings message, changed by field mask, audited in an
append-only table; and the first setting, `frozen`, as backend callers meet it."""

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import error_details, funded_account, new_id

# Every setting, as the audit trail stores them, at its default.
DEFAULTS = {
    "frozen": False,
    "overdraft_limit": 0,
    "spend_limit_day": 0,
    "spend_limit_month": 0,
    "spend_limit_rolling": 0,
    "spend_limit_rolling_hours": 0,
}


async def _update(
    stub: Stub, account: str, paths: list[str], reason: str = "", *, frozen: bool
) -> pb.Account:
    response: pb.UpdateAccountSettingsResponse = await stub.UpdateAccountSettings(
        pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(frozen=frozen),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            reason=reason,
        ),
        timeout=T,
    )
    return response.account


async def _reserve(stub: Stub, account: str, amount: int, key: str) -> pb.Reservation:
    response: pb.ReserveResponse = await stub.Reserve(
        pb.ReserveRequest(account_id=account, amount=amount, idempotency_key=key), timeout=T
    )
    return response.reservation


async def _refusal(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    reason, fields = error_details(raised.value)
    return raised.value.code(), reason, fields


async def test_an_account_nobody_configured_answers_the_defaults(ops: Stub) -> None:
    account = new_id()
    got: pb.GetAccountResponse = await ops.GetAccount(
        pb.GetAccountRequest(account_id=account), timeout=T
    )
    assert got.account.account_id == account
    assert got.account.settings == pb.AccountSettings()
    assert got.account.settings_version == 0
    assert not got.account.HasField("settings_updated_at")
    assert got.account.settings_updated_by == ""


async def test_a_change_is_audited_with_who_when_and_why(
    ops: Stub, admin_engine: AsyncEngine
) -> None:
    account = await funded_account(ops, 100)
    frozen = await _update(ops, account, ["frozen"], "chargeback storm", frozen=True)
    assert frozen.settings.frozen
    assert (frozen.settings_version, frozen.settings_updated_by) == (1, "ops")
    assert frozen.HasField("settings_updated_at")
    got: pb.GetAccountResponse = await ops.GetAccount(
        pb.GetAccountRequest(account_id=account), timeout=T
    )
    assert got.account == frozen
    async with admin_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT version, changed_by, update_mask, before, after, reason"
                    " FROM account_settings_changes WHERE account_id = :a"
                ),
                {"a": account},
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, "ops", ["frozen"], DEFAULTS, {**DEFAULTS, "frozen": True}, "chargeback storm")
    ]


async def test_setting_a_value_again_changes_and_audits_nothing(ops: Stub) -> None:
    account = new_id()
    first = await _update(ops, account, ["frozen"], frozen=True)
    again = await _update(ops, account, ["frozen"], frozen=True)
    assert again == first
    assert again.settings_version == 1


async def test_an_update_without_a_mask_changes_nothing(ops: Stub) -> None:
    account = new_id()
    await _update(ops, account, ["frozen"], frozen=True)
    # `frozen` is false in the message, but no mask names it: refused, and it stays true.
    code, reason, fields = await _refusal(_update(ops, account, [], frozen=False))
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["update_mask"],
    )
    got: pb.GetAccountResponse = await ops.GetAccount(
        pb.GetAccountRequest(account_id=account), timeout=T
    )
    assert got.account.settings.frozen


@pytest.mark.parametrize(
    ("account", "paths", "reason", "bad"),
    [
        ("", ["frozen"], "", ["account_id"]),
        ("ok", ["frozen", "overdraft"], "", ["update_mask"]),
        ("ok", ["settings.frozen"], "", ["update_mask"]),
        ("ok", ["frozen"], "r" * 501, ["reason"]),
    ],
)
async def test_a_bad_update_is_refused_by_field_and_changes_nothing(
    ops: Stub, account: str, paths: list[str], reason: str, bad: list[str]
) -> None:
    account_id = new_id() if account == "ok" else account
    code, why, fields = await _refusal(_update(ops, account_id, paths, reason, frozen=True))
    assert (code, why, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", bad)
    if account_id:
        got: pb.GetAccountResponse = await ops.GetAccount(
            pb.GetAccountRequest(account_id=account_id), timeout=T
        )
        assert got.account.settings_version == 0


async def test_a_frozen_account_takes_no_new_hold_but_settles_what_it_holds(
    ops: Stub, backend: Stub, gateway: Stub
) -> None:
    account = await funded_account(ops, 100)
    held = await _reserve(backend, account, 30, key := new_id("job"))
    to_release = await _reserve(backend, account, 20, new_id("job"))
    await _update(ops, account, ["frozen"], "customer asked", frozen=True)

    code, reason, _ = await _refusal(_reserve(backend, account, 1, new_id("job")))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN")
    # A hold taken before the freeze replays as it was.
    assert (await _reserve(backend, account, 30, key)).reservation_id == held.reservation_id
    confirmed: pb.ConfirmResponse = await backend.Confirm(
        pb.ConfirmRequest(account_id=account, reservation_id=held.reservation_id), timeout=T
    )
    assert confirmed.reservation.status == pb.RESERVATION_STATUS_CONFIRMED
    released: pb.ReleaseResponse = await backend.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=to_release.reservation_id),
        timeout=T,
    )
    assert released.reservation.status == pb.RESERVATION_STATUS_RELEASED
    # Credits still arrive (and can be taken back) on a frozen account.
    await funded_account(gateway, 5, account)
    balance: pb.GetBalanceResponse = await backend.GetBalance(
        pb.GetBalanceRequest(account_id=account), timeout=T
    )
    assert (balance.available, balance.reserved) == (75, 0)

    await _update(ops, account, ["frozen"], "resolved", frozen=False)
    assert (await _reserve(backend, account, 75, new_id("job"))).amount == 75


async def test_an_account_can_be_frozen_before_its_first_credits(ops: Stub, backend: Stub) -> None:
    account = new_id()
    await _update(ops, account, ["frozen"], frozen=True)
    await funded_account(ops, 10, account)
    code, reason, _ = await _refusal(_reserve(backend, account, 1, new_id("job")))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN")


async def test_the_audit_trail_refuses_changes(ops: Stub, admin_engine: AsyncEngine) -> None:
    account = new_id()
    await _update(ops, account, ["frozen"], frozen=True)
    for statement in (
        "UPDATE account_settings_changes SET reason = 'forged' WHERE account_id = :a",
        "DELETE FROM account_settings_changes WHERE account_id = :a",
    ):
        async with admin_engine.connect() as conn:
            with pytest.raises(DBAPIError, match="append-only"):
                await conn.execute(text(statement), {"a": account})
