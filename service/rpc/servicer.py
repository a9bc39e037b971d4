"""The gRPC face of the ledger: each method translates the request into a command, makes
one ledger call and translates the answer. Errors travel up to the interceptors, which
own the one mapping from errors to statuses."""

import datetime
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from service.access.context import current_caller
from service.ledger import commands, model
from service.ledger.operations import Deadline, Ledger


def deadline_of(context: grpc.aio.ServicerContext) -> Deadline:
    """The client's deadline as a moment of time.monotonic(), for the store's timeouts."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _timestamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _wire_time(
    message: duration_pb2.Duration | timestamp_pb2.Timestamp, present: bool
) -> commands.WireTime | None:
    """A Duration or Timestamp as received; validation checks its range."""
    return commands.WireTime(message.seconds, message.nanos) if present else None


def reservation_message(r: model.Reservation) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=str(r.reservation_id),
        account_id=r.account_id,
        amount=r.amount,
        confirmed_amount=r.confirmed_amount,
        status=pb.ReservationStatus.ValueType(int(r.status)),
        job_id=r.job_id,
        job_type=r.job_type,
        description=r.description,
        created_at=_timestamp(r.created_at),
        expires_at=_timestamp(r.expires_at),
        returned_amount=r.returned_amount,
        release_reason=r.release_reason,
        overrun_amount=r.overrun_amount,
        price_version=r.price_version or 0,
        unit_price=r.unit_price or 0,
        quantity=r.quantity or 0,
    )


def price_message(p: model.Price) -> pb.Price:
    return pb.Price(
        job_type=p.job_type,
        version=p.version,
        unit_price=p.unit_price or 0,
        unit=p.unit,
        retired=p.retired,
        effective_at=_timestamp(p.effective_at),
        set_at=_timestamp(p.set_at),
        set_by=p.set_by,
        reason=p.reason,
    )


def settings_message(s: model.AccountSettings) -> pb.AccountSettings:
    message = pb.AccountSettings(
        frozen=s.frozen,
        overdraft_limit=s.overdraft_limit,
        spend_limit_day=s.spend_limit_day,
        spend_limit_month=s.spend_limit_month,
        spend_limit_rolling=s.spend_limit_rolling,
        spend_limit_rolling_hours=s.spend_limit_rolling_hours,
    )
    if s.balance_alert_thresholds is not None:
        message.balance_alert_thresholds.thresholds.extend(s.balance_alert_thresholds)
    return message


def settings_of(m: pb.AccountSettings) -> model.AccountSettings:
    return model.AccountSettings(
        frozen=m.frozen,
        overdraft_limit=m.overdraft_limit,
        spend_limit_day=m.spend_limit_day,
        spend_limit_month=m.spend_limit_month,
        spend_limit_rolling=m.spend_limit_rolling,
        spend_limit_rolling_hours=m.spend_limit_rolling_hours,
        balance_alert_thresholds=(
            tuple(m.balance_alert_thresholds.thresholds)
            if m.HasField("balance_alert_thresholds")
            else None
        ),
    )


def spend_limit_message(u: model.SpendLimitUse) -> pb.SpendLimitUse:
    message = pb.SpendLimitUse(limit=u.limit, limit_amount=u.limit_amount, used=u.used)
    if u.resets_at is not None:
        message.resets_at.CopyFrom(_timestamp(u.resets_at))
    return message


def event_message(e: model.Event) -> pb.Event:
    return pb.Event(
        event_id=str(e.event_id),
        cursor=str(e.cursor),
        type=pb.EventType.ValueType(int(e.type)),
        account_id=e.account_id,
        occurred_at=_timestamp(e.occurred_at),
        grant_id=str(e.grant_id) if e.grant_id else "",
        reservation_id=str(e.reservation_id) if e.reservation_id else "",
        revocation_id=str(e.revocation_id) if e.revocation_id else "",
        caller=e.caller or "",
        amount=e.amount,
        returned_amount=e.returned_amount,
        unrecovered_amount=e.unrecovered_amount,
        threshold=e.threshold or 0,
        available_after=e.available_after,
        price=price_message(e.price) if e.price is not None else None,
    )


def account_message(a: model.Account) -> pb.Account:
    message = pb.Account(
        account_id=a.account_id,
        settings=settings_message(a.settings),
        settings_version=a.settings_version,
        settings_updated_by=a.settings_updated_by or "",
        spend_limits=[spend_limit_message(u) for u in a.spend_limits],
        debt=a.debt,
    )
    if a.settings_updated_at is not None:
        message.settings_updated_at.CopyFrom(_timestamp(a.settings_updated_at))
    return message


def allocation_message(a: model.Allocation) -> pb.Allocation:
    return pb.Allocation(
        grant_id=str(a.grant_id), amount=a.amount, returned_amount=a.returned_amount
    )


def entry_message(e: model.LedgerEntry) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        entry_id=e.entry_id,
        kind=pb.EntryKind.ValueType(int(e.kind)),
        amount=e.amount,
        grant_id=str(e.grant_id),
        reservation_id=str(e.reservation_id) if e.reservation_id else "",
        revocation_id=str(e.revocation_id) if e.revocation_id else "",
        created_at=_timestamp(e.created_at),
        balance_after=e.balance_after,
        transfer_id=str(e.transfer_id) if e.transfer_id else "",
    )


def transfer_message(t: model.Transfer) -> pb.TransferRecord:
    lots = []
    for lot in t.lots:
        message = pb.TransferLot(
            source_grant_id=str(lot.source_grant_id),
            destination_grant_id=str(lot.destination_grant_id),
            amount=lot.amount,
            priority=lot.priority,
        )
        if lot.expires_at is not None:
            message.expires_at.CopyFrom(_timestamp(lot.expires_at))
        lots.append(message)
    return pb.TransferRecord(
        transfer_id=str(t.transfer_id),
        from_account_id=t.from_account_id,
        to_account_id=t.to_account_id,
        amount=t.amount,
        description=t.description,
        created_at=_timestamp(t.created_at),
        lots=lots,
    )


def grant_message(g: model.Grant) -> pb.Grant:
    message = pb.Grant(
        grant_id=str(g.grant_id),
        account_id=g.account_id,
        original_amount=g.original_amount,
        remaining_amount=g.remaining_amount,
        source=pb.GrantSource.ValueType(int(g.source)),
        external_ref=g.external_ref or "",
        created_at=_timestamp(g.created_at),
        revoked_amount=g.revoked_amount,
        priority=g.priority,
        unrecovered_amount=g.unrecovered_amount,
        expired_amount=g.expired_amount,
    )
    if g.expires_at is not None:
        message.expires_at.CopyFrom(_timestamp(g.expires_at))
    return message


class CreditsServicer(credits_pb2_grpc.CreditsServiceServicer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveResponse:
        reservation = await self._ledger.reserve(
            commands.ReserveCommand(
                caller=current_caller(),
                account_id=request.account_id,
                amount=request.amount,
                idempotency_key=request.idempotency_key,
                job_id=request.job_id,
                job_type=request.job_type,
                description=request.description,
                metadata=dict(request.metadata),
                ttl=_wire_time(request.ttl, request.HasField("ttl")),
                quantity=request.quantity,
            ),
            deadline=deadline_of(context),
        )
        return pb.ReserveResponse(reservation=reservation_message(reservation))

    async def Confirm(
        self, request: pb.ConfirmRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmResponse:
        reservation = await self._ledger.confirm(
            commands.ConfirmCommand(
                account_id=request.account_id,
                reservation_id=request.reservation_id,
                amount=request.amount if request.HasField("amount") else None,
                allow_overrun=request.allow_overrun,
                quantity=request.quantity if request.HasField("quantity") else None,
            ),
            deadline=deadline_of(context),
        )
        return pb.ConfirmResponse(reservation=reservation_message(reservation))

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseResponse:
        reservation = await self._ledger.release(
            commands.ReleaseCommand(
                account_id=request.account_id,
                reservation_id=request.reservation_id,
                reason=request.reason,
            ),
            deadline=deadline_of(context),
        )
        return pb.ReleaseResponse(reservation=reservation_message(reservation))

    async def Grant(
        self, request: pb.GrantRequest, context: grpc.aio.ServicerContext
    ) -> pb.GrantResponse:
        granted = await self._ledger.grant(
            commands.GrantCommand(
                caller=current_caller(),
                account_id=request.account_id,
                amount=request.amount,
                source=request.source,
                idempotency_key=request.idempotency_key,
                external_ref=request.external_ref,
                expires_at=_wire_time(request.expires_at, request.HasField("expires_at")),
                description=request.description,
                metadata=dict(request.metadata),
                priority=request.priority,
            ),
            deadline=deadline_of(context),
        )
        return pb.GrantResponse(grant=grant_message(granted.grant), replayed=granted.replayed)

    async def Revoke(
        self, request: pb.RevokeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeResponse:
        revocation = await self._ledger.revoke(
            commands.RevokeCommand(
                caller=current_caller(),
                account_id=request.account_id,
                idempotency_key=request.idempotency_key,
                grant_id=request.grant_id,
                external_ref=request.external_ref,
                amount=request.amount,
                reason=request.reason,
                cumulative_series=request.cumulative_series,
                withdraw=request.withdraw,
                as_of=_wire_time(request.as_of, request.HasField("as_of")),
            ),
            deadline=deadline_of(context),
        )
        return pb.RevokeResponse(
            grant=grant_message(revocation.grant),
            revoked_amount=revocation.revoked_amount,
            unrecovered_amount=revocation.unrecovered_amount,
            restored_amount=revocation.restored_amount,
            cancelled_amount=revocation.cancelled_amount,
        )

    async def Transfer(
        self, request: pb.TransferRequest, context: grpc.aio.ServicerContext
    ) -> pb.TransferResponse:
        transfer = await self._ledger.transfer(
            commands.TransferCommand(
                caller=current_caller(),
                from_account_id=request.from_account_id,
                to_account_id=request.to_account_id,
                amount=request.amount,
                idempotency_key=request.idempotency_key,
                description=request.description,
            ),
            deadline=deadline_of(context),
        )
        return pb.TransferResponse(transfer=transfer_message(transfer))

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        balance = await self._ledger.balance(
            commands.BalanceQuery(request.account_id), deadline=deadline_of(context)
        )
        response = pb.GetBalanceResponse(
            account_id=balance.account_id,
            available=balance.available,
            reserved=balance.reserved,
            expiring_amount=balance.expiring_amount,
            debt=balance.debt,
        )
        if balance.next_expiry is not None:
            response.next_expiry.CopyFrom(_timestamp(balance.next_expiry))
        return response

    async def ListUsage(
        self, request: pb.ListUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUsageResponse:
        page = await self._ledger.usage(
            commands.UsageQuery(request.account_id, request.page_size, request.page_token),
            deadline=deadline_of(context),
        )
        return pb.ListUsageResponse(
            reservations=[reservation_message(r) for r in page.reservations],
            next_page_token=page.next_page_token,
        )

    async def ListGrants(
        self, request: pb.ListGrantsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListGrantsResponse:
        page = await self._ledger.grants(
            commands.GrantsQuery(
                account_id=request.account_id,
                page_size=request.page_size,
                page_token=request.page_token,
                include_finished=request.include_finished,
            ),
            deadline=deadline_of(context),
        )
        return pb.ListGrantsResponse(
            grants=[
                pb.GrantLot(grant=grant_message(lot.grant), held_amount=lot.held_amount)
                for lot in page.grants
            ],
            next_page_token=page.next_page_token,
        )

    async def ListEntries(
        self, request: pb.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEntriesResponse:
        page = await self._ledger.entries(
            commands.EntriesQuery(
                account_id=request.account_id,
                page_size=request.page_size,
                page_token=request.page_token,
                since=_wire_time(request.since, request.HasField("since")),
                until=_wire_time(request.until, request.HasField("until")),
                kinds=tuple(request.kinds),
            ),
            deadline=deadline_of(context),
        )
        return pb.ListEntriesResponse(
            entries=[entry_message(e) for e in page.entries],
            next_page_token=page.next_page_token,
        )

    async def GetReservation(
        self, request: pb.GetReservationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReservationResponse:
        detail = await self._ledger.reservation(
            commands.ReservationQuery(request.account_id, request.reservation_id),
            deadline=deadline_of(context),
        )
        return pb.GetReservationResponse(
            reservation=reservation_message(detail.reservation),
            allocations=[allocation_message(a) for a in detail.allocations],
            extendable_until=_timestamp(detail.extendable_until),
        )

    async def ExtendReservation(
        self, request: pb.ExtendReservationRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtendReservationResponse:
        extension = await self._ledger.extend(
            commands.ExtendCommand(
                account_id=request.account_id,
                reservation_id=request.reservation_id,
                ttl=_wire_time(request.ttl, request.HasField("ttl")),
            ),
            deadline=deadline_of(context),
        )
        return pb.ExtendReservationResponse(
            reservation=reservation_message(extension.reservation),
            extendable_until=_timestamp(extension.extendable_until),
        )

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountResponse:
        account = await self._ledger.account(
            commands.AccountQuery(request.account_id), deadline=deadline_of(context)
        )
        return pb.GetAccountResponse(account=account_message(account))

    async def GetUsageSummary(
        self, request: pb.GetUsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageSummaryResponse:
        summary = await self._ledger.usage_summary(
            commands.UsageSummaryQuery(
                since=_wire_time(request.since, request.HasField("since")),
                until=_wire_time(request.until, request.HasField("until")),
                account_id=request.account_id,
            ),
            deadline=deadline_of(context),
        )
        return pb.GetUsageSummaryResponse(
            job_types=[
                pb.JobTypeUsage(
                    job_type=u.job_type,
                    confirmed=u.confirmed,
                    released=u.released,
                    expired=u.expired,
                    captured_amount=u.captured_amount,
                    success_per_mille=u.success_per_mille,
                )
                for u in summary
            ]
        )

    async def UpdateAccountSettings(
        self, request: pb.UpdateAccountSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateAccountSettingsResponse:
        account = await self._ledger.update_account_settings(
            commands.UpdateAccountSettingsCommand(
                caller=current_caller(),
                account_id=request.account_id,
                settings=settings_of(request.settings),
                update_mask=tuple(request.update_mask.paths),
                reason=request.reason,
            ),
            deadline=deadline_of(context),
        )
        return pb.UpdateAccountSettingsResponse(account=account_message(account))

    async def SetPrice(
        self, request: pb.SetPriceRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPriceResponse:
        price = await self._ledger.set_price(
            commands.SetPriceCommand(
                caller=current_caller(),
                job_type=request.job_type,
                unit_price=request.unit_price,
                unit=request.unit,
                effective_at=_wire_time(request.effective_at, request.HasField("effective_at")),
                reason=request.reason,
                retire=request.retire,
            ),
            deadline=deadline_of(context),
        )
        return pb.SetPriceResponse(price=price_message(price))

    async def ListPrices(
        self, request: pb.ListPricesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPricesResponse:
        page = await self._ledger.prices(
            commands.PricesQuery(
                at=_wire_time(request.at, request.HasField("at")),
                page_size=request.page_size,
                page_token=request.page_token,
            ),
            deadline=deadline_of(context),
        )
        return pb.ListPricesResponse(
            prices=[price_message(p) for p in page.prices], next_page_token=page.next_page_token
        )

    async def ListPriceHistory(
        self, request: pb.ListPriceHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPriceHistoryResponse:
        page = await self._ledger.price_history(
            commands.PriceHistoryQuery(request.job_type, request.page_size, request.page_token),
            deadline=deadline_of(context),
        )
        return pb.ListPriceHistoryResponse(
            prices=[price_message(p) for p in page.prices], next_page_token=page.next_page_token
        )

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        start = request.WhichOneof("start")
        events = await self._ledger.watch_events(
            commands.WatchEventsQuery(
                after_cursor=request.after_cursor if start == "after_cursor" else None,
                from_oldest=start == "from_oldest" and request.from_oldest,
                account_id=request.account_id,
                types=tuple(request.types),
            )
        )
        async for event in events:
            yield pb.WatchEventsResponse(event=event_message(event))
