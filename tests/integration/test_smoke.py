from credits.v1 import credits_pb2 as pb
from tests.support import new_id


async def test_grant_reserve_confirm_balance(ops, backend):
    account = new_id()
    await ops.Grant(
        pb.GrantRequest(
            account_id=account,
            amount=1000,
            source=pb.GRANT_SOURCE_PURCHASE,
            idempotency_key=new_id("g"),
        ),
        timeout=10,
    )
    r = await backend.Reserve(
        pb.ReserveRequest(account_id=account, amount=300, idempotency_key=new_id("r")), timeout=10
    )
    await backend.Confirm(
        pb.ConfirmRequest(
            account_id=account, reservation_id=r.reservation.reservation_id, amount=200
        ),
        timeout=10,
    )
    b = await backend.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=10)
    assert (b.available, b.reserved) == (800, 0)
