"""What generation workloads need, through the real server (issue 19): Confirm above the
hold (allow_overrun) from the available credits and then an overdraft debt that the next
grant pays first, and spend limits per UTC day, month and rolling window."""

import asyncio
import datetime
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from service.store import database, reconcile
from service.store.postgres import sqlalchemy_url
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import MovableClock, error_details, funded_account, new_id, other_database


async def _settings(ops: Stub, account: str, **settings: int | bool) -> pb.Account:
    response: pb.UpdateAccountSettingsResponse = await ops.UpdateAccountSettings(
        pb.UpdateAccountSettingsRequest(
            account_id=account,
            settings=pb.AccountSettings(**settings),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=list(settings)),
        ),
        timeout=T,
    )
    return response.account


async def _reserve(stub: Stub, account: str, amount: int) -> pb.Reservation:
    response: pb.ReserveResponse = await stub.Reserve(
        pb.ReserveRequest(account_id=account, amount=amount, idempotency_key=new_id("job")),
        timeout=T,
    )
    return response.reservation


async def _confirm(
    stub: Stub, account: str, reservation: pb.Reservation, amount: int, overrun: bool = True
) -> pb.Reservation:
    response: pb.ConfirmResponse = await stub.Confirm(
        pb.ConfirmRequest(
            account_id=account,
            reservation_id=reservation.reservation_id,
            amount=amount,
            allow_overrun=overrun,
        ),
        timeout=T,
    )
    return response.reservation


async def _balance(stub: Stub, account: str) -> pb.GetBalanceResponse:
    response: pb.GetBalanceResponse = await stub.GetBalance(
        pb.GetBalanceRequest(account_id=account), timeout=T
    )
    return response


async def _get(stub: Stub, account: str, reservation: pb.Reservation) -> pb.Reservation:
    response: pb.GetReservationResponse = await stub.GetReservation(
        pb.GetReservationRequest(account_id=account, reservation_id=reservation.reservation_id),
        timeout=T,
    )
    return response.reservation


async def _refusal(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """(code, ErrorInfo reason, ErrorInfo metadata) of a refused call."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    status = rpc_status.from_call(raised.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return raised.value.code(), info.reason, dict(info.metadata)


async def _kinds(stub: Stub, account: str) -> list[tuple[int, int]]:
    """(kind, amount) of the account's statement, oldest first."""
    response: pb.ListEntriesResponse = await stub.ListEntries(
        pb.ListEntriesRequest(account_id=account), timeout=T
    )
    return [(e.kind, e.amount) for e in reversed(response.entries)]


async def test_an_overrun_leaves_the_account_lower_by_the_extra(ops: Stub, backend: Stub) -> None:
    at_hold, above = await funded_account(ops, 500), await funded_account(ops, 500)
    await _confirm(backend, at_hold, await _reserve(backend, at_hold, 100), 100)
    confirmed = await _confirm(backend, above, held := await _reserve(backend, above, 100), 130)
    assert (confirmed.confirmed_amount, confirmed.overrun_amount) == (130, 30)
    assert confirmed.status == pb.RESERVATION_STATUS_CONFIRMED
    assert (await _balance(backend, at_hold)).available == 400
    assert (await _balance(backend, above)).available == 370
    assert (await _get(ops, above, held)).overrun_amount == 30
    assert (pb.ENTRY_KIND_OVERRUN, -30) in await _kinds(ops, above)


async def test_without_the_flag_more_than_the_hold_is_refused_as_before(
    ops: Stub, backend: Stub
) -> None:
    account = await funded_account(ops, 500)
    held = await _reserve(backend, account, 100)
    code, reason, _ = await _refusal(_confirm(backend, account, held, 130, overrun=False))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CAPTURE_EXCEEDS_RESERVATION")
    assert (await _get(ops, account, held)).status == pb.RESERVATION_STATUS_RESERVED


async def test_an_overdraft_becomes_debt_that_the_next_grant_pays_first(
    ops: Stub, backend: Stub
) -> None:
    account = await funded_account(ops, 100)
    await _settings(ops, account, overdraft_limit=50)
    held = await _reserve(backend, account, 100)
    confirmed = await _confirm(backend, account, held, 150)
    assert confirmed.overrun_amount == 50
    balance = await _balance(backend, account)
    assert (balance.available, balance.debt) == (0, 50)
    got: pb.GetAccountResponse = await ops.GetAccount(
        pb.GetAccountRequest(account_id=account), timeout=T
    )
    assert got.account.debt == 50

    await funded_account(ops, 80, account)
    balance = await _balance(backend, account)
    assert (balance.available, balance.debt) == (30, 0)
    assert (await _kinds(ops, account))[-2:] == [
        (pb.ENTRY_KIND_GRANT, 80),
        (pb.ENTRY_KIND_DEBT_REPAYMENT, -50),
    ]


async def test_beyond_the_overdraft_nothing_changes_and_the_hold_stays_active(
    ops: Stub, backend: Stub
) -> None:
    account = await funded_account(ops, 120)
    await _settings(ops, account, overdraft_limit=50)
    held = await _reserve(backend, account, 100)
    # 20 available and 50 of overdraft cover 70 above the hold; 71 is refused.
    code, reason, _ = await _refusal(_confirm(backend, account, held, 171))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    assert (await _get(ops, account, held)).status == pb.RESERVATION_STATUS_RESERVED
    balance = await _balance(backend, account)
    assert (balance.available, balance.reserved, balance.debt) == (20, 100, 0)
    confirmed = await _confirm(backend, account, held, 170)
    assert confirmed.overrun_amount == 70
    assert (await _balance(backend, account)).debt == 50


async def test_a_frozen_account_refuses_an_overrun_but_confirms_the_hold(
    ops: Stub, backend: Stub
) -> None:
    account = await funded_account(ops, 500)
    held = await _reserve(backend, account, 100)
    await _settings(ops, account, frozen=True)
    code, reason, _ = await _refusal(_confirm(backend, account, held, 130))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN")
    assert (await _confirm(backend, account, held, 100)).confirmed_amount == 100


async def test_a_replayed_overrun_answers_the_same_and_takes_once(ops: Stub, backend: Stub) -> None:
    account = await funded_account(ops, 500)
    held = await _reserve(backend, account, 100)
    first = await _confirm(backend, account, held, 130)
    assert await _confirm(backend, account, held, 130) == first
    assert await _confirm(backend, account, held, 130, overrun=False) == first
    code, reason, _ = await _refusal(_confirm(backend, account, held, 140))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_ACTIVE")
    assert (await _balance(backend, account)).available == 370


def _next_utc_midnight(now: datetime.datetime) -> str:
    day = now.astimezone(datetime.UTC).date() + datetime.timedelta(days=1)
    return f"{day.isoformat()}T00:00:00Z"


async def test_a_day_limit_refuses_the_reserve_that_would_pass_it_and_a_release_makes_room(
    ops: Stub, backend: Stub
) -> None:
    account = await funded_account(ops, 5000)
    await _settings(ops, account, spend_limit_day=1000)
    first = await _reserve(backend, account, 600)
    await _confirm(backend, account, await _reserve(backend, account, 300), 300)
    code, reason, metadata = await _refusal(_reserve(backend, account, 101))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SPEND_LIMIT_EXCEEDED")
    assert set(metadata) == {"limit", "resets_at"}
    assert metadata["limit"] == "day"
    got: pb.GetAccountResponse = await ops.GetAccount(
        pb.GetAccountRequest(account_id=account), timeout=T
    )
    [use] = got.account.spend_limits
    assert (use.limit, use.limit_amount, use.used) == ("day", 1000, 900)
    assert metadata["resets_at"] == _next_utc_midnight(first.created_at.ToDatetime(datetime.UTC))
    assert use.resets_at.ToJsonString() == metadata["resets_at"]

    await backend.Release(
        pb.ReleaseRequest(account_id=account, reservation_id=first.reservation_id), timeout=T
    )
    assert (await _reserve(backend, account, 101)).amount == 101


async def test_a_day_limit_gives_its_room_back_at_the_next_utc_midnight(
    ops: Stub, backend: Stub, clock: MovableClock
) -> None:
    account = await funded_account(ops, 5000)
    await _settings(ops, account, spend_limit_day=100)
    await _confirm(backend, account, await _reserve(backend, account, 100), 100)
    _, _, metadata = await _refusal(_reserve(backend, account, 1))
    resets_at = datetime.datetime.fromisoformat(metadata["resets_at"])
    clock.advance((resets_at - clock()).total_seconds() + 1)
    assert (await _reserve(backend, account, 100)).amount == 100


async def test_an_overrun_counts_against_the_spend_limits(ops: Stub, backend: Stub) -> None:
    account = await funded_account(ops, 5000)
    await _settings(ops, account, spend_limit_day=1000, spend_limit_month=1100)
    held = await _reserve(backend, account, 900)
    code, reason, metadata = await _refusal(_confirm(backend, account, held, 1001))
    assert (code, reason, metadata["limit"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPEND_LIMIT_EXCEEDED",
        "day",
    )
    assert (await _get(ops, account, held)).status == pb.RESERVATION_STATUS_RESERVED
    assert (await _confirm(backend, account, held, 1000)).overrun_amount == 100


async def test_the_refusal_names_the_first_check_that_fails_in_the_documented_order(
    ops: Stub, backend: Stub
) -> None:
    account = await funded_account(ops, 5000)
    await _settings(
        ops,
        account,
        spend_limit_day=300,
        spend_limit_month=200,
        spend_limit_rolling=100,
        spend_limit_rolling_hours=6,
    )
    assert (await _refusal(_reserve(backend, account, 301)))[2]["limit"] == "day"
    assert (await _refusal(_reserve(backend, account, 201)))[2]["limit"] == "month"
    _, reason, metadata = await _refusal(_reserve(backend, account, 101))
    assert (reason, metadata["limit"]) == ("SPEND_LIMIT_EXCEEDED", "rolling")
    # The spend limits come before the balance.
    empty = new_id()
    await _settings(ops, empty, spend_limit_day=10)
    assert (await _refusal(_reserve(backend, empty, 11)))[1] == "SPEND_LIMIT_EXCEEDED"
    assert (await _refusal(_reserve(backend, empty, 10)))[1] == "INSUFFICIENT_CREDITS"
    # A frozen account comes before every limit.
    await _settings(ops, empty, frozen=True)
    assert (await _refusal(_reserve(backend, empty, 11)))[1] == "ACCOUNT_FROZEN"


async def test_a_rolling_window_resets_when_its_oldest_spend_leaves_it(
    ops: Stub, backend: Stub, clock: MovableClock
) -> None:
    account = await funded_account(ops, 5000)
    await _settings(ops, account, spend_limit_rolling=100, spend_limit_rolling_hours=2)
    held = await _reserve(backend, account, 100)
    got: pb.GetAccountResponse = await ops.GetAccount(
        pb.GetAccountRequest(account_id=account), timeout=T
    )
    [use] = got.account.spend_limits
    assert use.used == 100
    # The first whole second after the hold leaves the window (at `leaves` it still counts).
    leaves = held.created_at.ToDatetime() + datetime.timedelta(hours=2)
    assert use.resets_at.ToDatetime() - leaves <= datetime.timedelta(seconds=1)
    assert use.resets_at.ToDatetime() > leaves
    assert use.resets_at.nanos == 0
    await _confirm(backend, account, held, 100)
    assert (await _refusal(_reserve(backend, account, 1)))[2]["limit"] == "rolling"
    clock.advance(2 * 3600 + 1)
    assert (await _reserve(backend, account, 100)).amount == 100


@pytest.mark.parametrize(
    ("settings", "bad"),
    [
        ({"overdraft_limit": -1}, ["overdraft_limit"]),
        ({"spend_limit_day": -5}, ["spend_limit_day"]),
        ({"spend_limit_rolling": 10}, ["spend_limit_rolling"]),
        (
            {"spend_limit_rolling": 10, "spend_limit_rolling_hours": 745},
            ["spend_limit_rolling_hours"],
        ),
        ({"spend_limit_rolling_hours": 0}, ["spend_limit_rolling_hours"]),
    ],
)
async def test_bad_limits_are_refused_by_field(
    ops: Stub, settings: dict[str, int], bad: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _settings(ops, new_id(), **settings)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(raised.value) == ("INVALID_REQUEST", bad)


async def test_concurrent_overruns_never_borrow_past_the_overdraft(
    ops: Stub, backend: Stub
) -> None:
    account = await funded_account(ops, 200)
    await _settings(ops, account, overdraft_limit=50)
    holds = [await _reserve(backend, account, 10) for _ in range(20)]
    # Each asks for 20 above its hold: the 0 left available and 50 of overdraft cover
    # two and a half of them, whatever the order.
    outcomes = await asyncio.gather(
        *(_confirm(backend, account, h, 30) for h in holds), return_exceptions=True
    )
    done = [o for o in outcomes if isinstance(o, pb.Reservation)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(done) + len(refused) == len(holds)
    assert all(error_details(e)[0] == "INSUFFICIENT_CREDITS" for e in refused)
    balance = await _balance(backend, account)
    # Every overrun came from the debt (nothing else was available).
    assert balance.debt == sum(o.overrun_amount for o in done) == 40
    assert balance.available == 0


async def test_the_database_refuses_a_negative_debt_and_an_overrun_borrowing_more_than_itself(
    ops: Stub, backend: Stub, admin_engine: AsyncEngine
) -> None:
    account = await funded_account(ops, 100)
    confirmed = await _confirm(backend, account, await _reserve(backend, account, 50), 60)
    async with admin_engine.connect() as conn:
        with pytest.raises(DBAPIError, match="ck_accounts_limits_non_negative"):
            await conn.execute(
                text("UPDATE accounts SET debt = -1 WHERE account_id = :a"), {"a": account}
            )
        with pytest.raises(DBAPIError, match="ck_reservations_settled_bounded"):
            await conn.execute(
                text(
                    "UPDATE reservations SET overrun_debt_amount = overrun_amount + 1"
                    " WHERE reservation_id = :r"
                ),
                {"r": confirmed.reservation_id},
            )


async def test_reconcile_finds_a_debt_nobody_borrowed_and_an_unrecorded_repayment(
    admin_url: str, admin_engine: AsyncEngine
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    async with admin_engine.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    broken_url = other_database(admin_url, name)
    # Alembic runs its own event loop: give it a thread of its own.
    await asyncio.to_thread(database.migrate, broken_url)
    engine = create_async_engine(sqlalchemy_url(broken_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(
                text("INSERT INTO accounts (account_id, debt) VALUES ('owes', 30), ('paid', 0)")
            )
            # A grant that says it paid 10 of a debt, with no repayment in the ledger.
            await conn.execute(
                text(
                    "WITH g AS (INSERT INTO grants (grant_id, account_id, source,"
                    " original_amount, remaining_amount, debt_paid_amount)"
                    " VALUES (gen_random_uuid(), 'paid', 1, 100, 90, 10) RETURNING grant_id)"
                    " INSERT INTO ledger_entries (account_id, grant_id, kind, amount)"
                    " SELECT 'paid', grant_id, 'grant', 100 FROM g"
                )
            )
        async with engine.connect() as conn:
            found = await reconcile.reconcile(conn)
    finally:
        await engine.dispose()
    details = {(d.subject, d.detail) for d in found}
    assert ("owes", "debt 30 <> borrowed 0 - paid 0") in details
    assert ("paid", "debt 0 <> borrowed 0 - paid 10") in details
    assert any(d.detail == "debt paid 10, repayment entries 0" for d in found)
