"""`transfer` against the real server: a typed `Transfer` with its lots, the key on the
result and a repeat with it answering the same transfer, both statements naming it, and
each refusal as its typed error."""

import datetime

import pytest

from credits_client import (
    AccountFrozen,
    CreditsClient,
    EntryKind,
    GrantSource,
    InsufficientCredits,
    InvalidRequest,
    PermissionDenied,
    Transfer,
    TransferLot,
)
from tests.client.conftest import funded
from tests.support import new_id


async def test_transfer_returns_its_lots_and_a_repeat_with_its_key_the_same(
    ops_client: CreditsClient,
) -> None:
    source, destination = new_id(), new_id()
    expiry = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=3)
    first = await ops_client.grant(source, 30, source="promotion", expires_at=expiry)
    second = await ops_client.grant(source, 70, source="purchase", priority=2)

    moved = await ops_client.transfer(source, destination, 50, description="to the team")

    assert isinstance(moved, Transfer)
    assert (moved.from_account_id, moved.to_account_id, moved.amount) == (
        source,
        destination,
        50,
    )
    assert moved.description == "to the team"
    assert moved.idempotency_key
    assert moved.created_at.utcoffset() == datetime.timedelta(0)
    assert [
        (lot.source_grant_id, lot.amount, lot.expires_at, lot.priority) for lot in moved.lots
    ] == [
        (first.grant_id, 30, expiry, 0),
        (second.grant_id, 20, None, 2),
    ]
    assert all(isinstance(lot, TransferLot) for lot in moved.lots)
    again = await ops_client.transfer(
        source, destination, 50, description="to the team", idempotency_key=moved.idempotency_key
    )
    assert again == moved
    assert (await ops_client.balance(source)).available == 50
    arrived = [lot.grant async for lot in ops_client.list_grants(destination)]
    assert {g.source for g in arrived} == {GrantSource.TRANSFER}
    assert {g.grant_id for g in arrived} == {lot.destination_grant_id for lot in moved.lots}


async def test_both_statements_carry_the_transfer_id(ops_client: CreditsClient) -> None:
    source, destination = await funded(ops_client, 100), new_id()
    moved = await ops_client.transfer(source, destination, 40)
    out = [e async for e in ops_client.list_entries(source, kinds=[EntryKind.TRANSFER_OUT])]
    into = [e async for e in ops_client.list_entries(destination, kinds=["transfer_in"])]
    assert [(e.amount, e.transfer_id) for e in out] == [(-40, moved.transfer_id)]
    assert [(e.amount, e.transfer_id) for e in into] == [(40, moved.transfer_id)]


async def test_refusals_are_typed_errors(
    ops_client: CreditsClient, backend_client: CreditsClient
) -> None:
    source = await funded(ops_client, 10)
    with pytest.raises(InsufficientCredits):
        await ops_client.transfer(source, new_id(), 11)
    with pytest.raises(InvalidRequest) as invalid:
        await ops_client.transfer(source, source, 1)
    assert [v.field for v in invalid.value.field_violations] == ["to_account_id"]
    with pytest.raises(PermissionDenied):
        await backend_client.transfer(source, new_id(), 1)
    await ops_client.update_account_settings(source, frozen=True)
    with pytest.raises(AccountFrozen):
        await ops_client.transfer(source, new_id(), 1)
    assert (await ops_client.balance(source)).available == 10


async def test_grant_refuses_the_transfer_source(ops_client: CreditsClient) -> None:
    with pytest.raises(InvalidRequest) as invalid:
        await ops_client.grant(new_id(), 10, source=GrantSource.TRANSFER)
    assert [v.field for v in invalid.value.field_violations] == ["source"]
