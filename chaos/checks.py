"""After the run, with traffic stopped: the acknowledgement log against the database.

- every acknowledged operation is there exactly once, with the outcome it was
  acknowledged with, and a refused one left nothing (no idempotency key);
- every grant (but those a transfer made), reservation, revocation and transfer of the
  run has exactly one idempotency key of a request the clients sent (replays and retries
  created nothing new);
- every freeze and unfreeze the ops caller was acknowledged is one change of the
  account's audit trail, and no account is left frozen;
- per account: available + reserved - debt = granted - captured - transferred out -
  revoked - expired (captured includes overruns; transfers in arrive as grants), nothing
  is negative, debt stays within the overdraft limit and spend within its limits; over
  all accounts, the transfers moved as much out as in (reconcile checks each transfer);
- the outbox against the ledger: every grant, reservation and settlement of the run is
  exactly one event, and each account's latest event carries its available balance;
- `reconcile` (service/store/reconcile.py) finds nothing.
"""

import datetime
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.receiver import Received
from chaos.report import Report
from chaos.workload import CALLER_OF, Ack
from credits_client import WebhookSignatureError, verify_webhook
from service.store.reconcile import reconcile

STATUS_CONFIRMED = 2
SOURCE_TRANSFER = 5
# Webhooks are checked after the run, long after they were signed.
WEBHOOK_TOLERANCE_SECONDS = 24 * 3600.0


async def check_log(
    engine: AsyncEngine, acks: list[Ack], accounts: list[str], report: Report
) -> None:
    async with engine.connect() as conn:
        keys = {
            (row.caller, row.idempotency_key): (row.operation, str(row.result_id))
            for row in await conn.execute(
                text(
                    "SELECT caller, idempotency_key, operation, result_id FROM idempotency_keys"
                    " WHERE account_id = ANY(:accounts)"
                ),
                {"accounts": accounts},
            )
        }
        grants = {
            str(row.grant_id): row
            for row in await conn.execute(
                text("SELECT * FROM grants WHERE account_id = ANY(:accounts)"),
                {"accounts": accounts},
            )
        }
        reservations = {
            str(row.reservation_id): row
            for row in await conn.execute(
                text("SELECT * FROM reservations WHERE account_id = ANY(:accounts)"),
                {"accounts": accounts},
            )
        }
        revocations = {
            str(row.revocation_id): row
            for row in await conn.execute(
                text("SELECT * FROM revocations WHERE account_id = ANY(:accounts)"),
                {"accounts": accounts},
            )
        }
        transfers = {
            str(row.transfer_id): row
            for row in await conn.execute(
                text("SELECT * FROM transfers WHERE from_account_id = ANY(:accounts)"),
                {"accounts": accounts},
            )
        }
        freezes = await conn.execute(
            text(
                "SELECT a.account_id, a.frozen, count(c.version) FILTER (WHERE"
                " (c.before->>'frozen') IS DISTINCT FROM (c.after->>'frozen')) AS changes"
                " FROM accounts a LEFT JOIN account_settings_changes c USING (account_id)"
                " WHERE a.account_id = ANY(:accounts) GROUP BY a.account_id, a.frozen"
            ),
            {"accounts": accounts},
        )
        _check_freezes(acks, {row[0]: (row[1], row[2]) for row in freezes}, report)
    sent = {(CALLER_OF[a.op], a.key) for a in acks if a.key is not None}
    stored = Stored(keys, grants, reservations, revocations, transfers)
    for ack in acks:
        _check_ack(ack, stored, report)
    stray = [k for k in keys if k not in sent]
    if stray:
        report.violation(f"{len(stray)} idempotency keys no client sent, e.g. {stray[0]}")
    results = Counter(result for _, result in keys.values())
    granted = {i: g for i, g in grants.items() if g.source != SOURCE_TRANSFER}
    for table, rows in (
        ("grant", granted),
        ("reserve", reservations),
        ("revoke", revocations),
        ("transfer", transfers),
    ):
        keyed = {result for (op, result) in keys.values() if op == table}
        unkeyed = [r for r in rows if r not in keyed]
        if unkeyed:
            report.violation(f"{len(unkeyed)} {table} rows without a key, e.g. {unkeyed[0]}")
    twice = [r for r, n in results.items() if n > 1]
    if twice:
        report.violation(f"{len(twice)} results recorded under two keys, e.g. {twice[0]}")
    report.checks.append(
        f"{len(acks)} acknowledgements against {len(grants)} grants, {len(reservations)}"
        f" reservations, {len(revocations)} revocations, {len(transfers)} transfers and"
        f" {len(keys)} keys"
    )


def _check_freezes(acks: list[Ack], stored: dict[str, tuple[bool, int]], report: Report) -> None:
    """Each acknowledged freeze or unfreeze changed the account once (the workload
    alternates them, one at a time per account), and the last unfreeze left it
    unfrozen; a call never acknowledged may or may not have changed it."""
    done: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for ack in acks:
        if ack.op == "UpdateAccountSettings" and "frozen" in ack.result:
            if ack.outcome == "ok":
                done[ack.account] += 1
            else:
                unknown[ack.account] += 1
    for account, (frozen, changes) in stored.items():
        if unknown[account] == 0 and (changes, frozen) != (done[account], False):
            report.violation(
                f"{account}: {done[account]} acknowledged freezes and unfreezes, {changes}"
                f" audited, left frozen={frozen}"
            )
        elif not done[account] <= changes <= done[account] + unknown[account]:
            report.violation(f"{account}: {changes} audited freezes and unfreezes")
    report.checks.append(
        f"{sum(done.values())} acknowledged freezes and unfreezes, each audited once,"
        " no account left frozen"
    )


@dataclass(frozen=True)
class Stored:
    """The run's rows, by id; keys by (caller, key) → (operation, result id)."""

    keys: dict[tuple[str, str], tuple[str, str]]
    grants: dict[str, Any]
    reservations: dict[str, Any]
    revocations: dict[str, Any]
    transfers: dict[str, Any]


def _check_ack(ack: Ack, stored: Stored, report: Report) -> None:
    if ack.outcome == "unacknowledged" or ack.op in (
        "GetBalance",
        "ExtendReservation",
        "UpdateAccountSettings",
        "GetUsageSummary",
    ):
        return
    key = stored.keys.get((CALLER_OF.get(ack.op, ""), ack.key or ""))
    if ack.key is not None and ack.outcome != "ok":
        if key is not None:
            report.violation(f"refused {ack.op} {ack.key} left its key behind")
        return
    if ack.op == "Grant":
        _check_grant(ack, key, stored, report)
    elif ack.op == "Reserve":
        _check_reserve(ack, key, stored, report)
    elif ack.op == "Revoke":
        _check_revoke(ack, key, stored, report)
    elif ack.op == "Transfer":
        _check_transfer(ack, key, stored, report)
    elif ack.outcome == "ok":
        _check_settled(ack, stored, report)


def _check_grant(ack: Ack, key: tuple[str, str] | None, stored: Stored, report: Report) -> None:
    g = stored.grants.get(ack.result["grant_id"])
    if key != ("grant", ack.result["grant_id"]) or g is None:
        report.violation(f"acknowledged grant {ack.key} is not stored under its key")
    elif (g.account_id, g.original_amount) != (ack.account, ack.result["amount"]):
        report.violation(f"grant {ack.key} stored with another account or amount")


def _check_reserve(ack: Ack, key: tuple[str, str] | None, stored: Stored, report: Report) -> None:
    r = stored.reservations.get(ack.result["reservation_id"])
    if key != ("reserve", ack.result["reservation_id"]) or r is None:
        report.violation(f"acknowledged reservation {ack.key} is not stored under its key")
    elif (r.account_id, r.amount) != (ack.account, ack.result["amount"]):
        report.violation(f"reservation {ack.key} stored with another account or amount")


def _check_revoke(ack: Ack, key: tuple[str, str] | None, stored: Stored, report: Report) -> None:
    v = stored.revocations.get(key[1]) if key else None
    if v is None:
        report.violation(f"acknowledged revocation {ack.key} is not stored under its key")
        return
    got = (str(v.grant_id), v.revoked_amount, v.unrecovered_amount)
    got_back = (v.restored_amount, v.cancelled_amount)
    want = (ack.result["grant_id"], ack.result["revoked"], ack.result["unrecovered"])
    if got != want or got_back != (ack.result["restored"], ack.result["cancelled"]):
        report.violation(f"revocation {ack.key} stored with other amounts")


def _check_transfer(ack: Ack, key: tuple[str, str] | None, stored: Stored, report: Report) -> None:
    t = stored.transfers.get(ack.result["transfer_id"])
    if key != ("transfer", ack.result["transfer_id"]) or t is None:
        report.violation(f"acknowledged transfer {ack.key} is not stored under its key")
    elif (t.from_account_id, t.to_account_id, t.amount) != (
        ack.account,
        ack.result["to"],
        ack.result["amount"],
    ):
        report.violation(f"transfer {ack.key} stored with other accounts or amount")


def _check_settled(ack: Ack, stored: Stored, report: Report) -> None:
    """A Confirm or Release is stored as it was answered."""
    rid = ack.result["reservation_id"]
    r = stored.reservations.get(rid)
    if r is None or r.status != ack.result["status"]:
        report.violation(f"{ack.op} of {rid} not stored as answered")
    elif r.status == STATUS_CONFIRMED and r.confirmed_amount != ack.result["confirmed_amount"]:
        report.violation(f"confirm of {rid}: another amount stored")


async def check_accounts(engine: AsyncEngine, accounts: list[str], report: Report) -> None:
    """Balances (settled now, as the service would) against the grants' history."""
    async with engine.connect() as conn, conn.begin():
        for account in accounts:
            balance = (
                await conn.execute(
                    text("SELECT * FROM credits_balance(:a, now(), NULL)"), {"a": account}
                )
            ).one()
            sums = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(original_amount), 0) AS granted,"
                        " coalesce(sum(revoked_amount), 0) AS revoked,"
                        " coalesce(sum(expired_amount), 0) AS expired,"
                        " coalesce(min(remaining_amount), 0) AS lowest,"
                        " (SELECT coalesce(sum(confirmed_amount), 0) FROM reservations"
                        "   WHERE account_id = :a AND status = :confirmed) AS captured,"
                        " (SELECT coalesce(max(overdraft_limit), 0) FROM accounts"
                        "   WHERE account_id = :a) AS overdraft_limit,"
                        " (SELECT coalesce(sum(l.amount), 0) FROM transfer_lots l"
                        "   JOIN grants s ON s.grant_id = l.source_grant_id"
                        "   WHERE s.account_id = :a) AS transferred"
                        " FROM grants WHERE account_id = :a"
                    ),
                    {"a": account, "confirmed": STATUS_CONFIRMED},
                )
            ).one()
            # Captured includes overruns; the part of them that became debt is owed.
            left = balance.available + balance.reserved - balance.debt
            right = sums.granted - sums.captured - sums.transferred - sums.revoked - sums.expired
            if left != right:
                report.violation(
                    f"{account}: available {balance.available} + reserved {balance.reserved}"
                    f" - debt {balance.debt} <> granted {sums.granted} - captured"
                    f" {sums.captured} - transferred {sums.transferred} - revoked"
                    f" {sums.revoked} - expired {sums.expired}"
                )
            if balance.available < 0 or balance.reserved < 0 or sums.lowest < 0:
                report.violation(f"{account}: a negative balance or remaining amount")
            if not 0 <= balance.debt <= sums.overdraft_limit:
                report.violation(f"{account}: debt outside 0 to its overdraft limit")
            # Spend only grows by the calls that check it; the rest gives room back.
            over = await conn.execute(
                text(
                    "SELECT s.limit_name FROM accounts a, credits_spend(a, now()) s"
                    " WHERE a.account_id = :a AND s.used > s.limit_amount"
                ),
                {"a": account},
            )
            for (limit,) in over:
                report.violation(f"{account}: its {limit} spend is past its limit")
    report.checks.append(
        f"{len(accounts)} accounts: available + reserved - debt = granted - captured"
        " - transferred out - revoked - expired, nothing negative, debt within the overdraft"
        " limit, spend within its limits"
    )


# The event a reservation's status settles with (ReservationStatus → event type).
SETTLED_EVENT = {2: "confirmed", 3: "released", 4: "reservation_expired"}


async def check_events(engine: AsyncEngine, accounts: list[str], report: Report) -> None:
    """Run after check_accounts, which settled every account: the outbox has one event per
    change of the ledger, none missing, none twice."""
    params = {"accounts": accounts}
    async with engine.connect() as conn:
        counted = Counter(
            (row.event_type, str(row.subject))
            for row in await conn.execute(
                text(
                    "SELECT event_type, coalesce(reservation_id, grant_id) AS subject"
                    " FROM ledger_events WHERE account_id = ANY(:accounts) AND event_type IN"
                    " ('granted', 'reserved', 'confirmed', 'released', 'reservation_expired')"
                ),
                params,
            )
        )
        expected = Counter(
            ("granted", str(row.grant_id))
            for row in await conn.execute(
                text("SELECT grant_id FROM grants WHERE account_id = ANY(:accounts)"), params
            )
        )
        for row in await conn.execute(
            text(
                "SELECT reservation_id, status FROM reservations WHERE account_id = ANY(:accounts)"
            ),
            params,
        ):
            expected[("reserved", str(row.reservation_id))] += 1
            if row.status in SETTLED_EVENT:
                expected[(SETTLED_EVENT[row.status], str(row.reservation_id))] += 1
        latest = {
            row.account_id: row.available_after
            for row in await conn.execute(
                text(
                    "SELECT DISTINCT ON (account_id) account_id, available_after FROM ledger_events"
                    " WHERE account_id = ANY(:accounts)"
                    " ORDER BY account_id, stream_position DESC, seq DESC"
                ),
                params,
            )
        }
        available = {
            row.account_id: row.available
            for row in await conn.execute(
                text(
                    "SELECT account_id, coalesce(sum(remaining_amount), 0) AS available"
                    " FROM grants WHERE account_id = ANY(:accounts) GROUP BY account_id"
                ),
                params,
            )
        }
    missing = expected - counted
    extra = counted - expected
    if missing:
        report.violation(
            f"{sum(missing.values())} changes without their event, e.g. {next(iter(missing))}"
        )
    if extra:
        report.violation(
            f"{sum(extra.values())} events without their change or twice, e.g. {next(iter(extra))}"
        )
    wrong = [a for a, amount in available.items() if latest.get(a, 0) != amount]
    if wrong:
        report.violation(
            f"{len(wrong)} accounts whose latest event is not their balance, e.g. {wrong[0]}"
        )
    report.checks.append(
        f"{sum(counted.values())} events: one per grant, reservation and settlement, each"
        " account's latest at its available balance"
    )


async def check_stream(
    engine: AsyncEngine,
    received: list[tuple[str, str, str]],
    accounts: list[str],
    report: Report,
) -> None:
    """What a WatchEvents consumer received across the run's faults against the outbox,
    up to the last cursor it received: every event once, in the stream's order."""
    if not received:
        report.violation("the stream consumer received no event")
        return
    position, seq = (int(part) for part in received[-1][2].split("-"))
    async with engine.connect() as conn:
        stored = [
            str(row.event_id)
            for row in await conn.execute(
                text(
                    "SELECT event_id FROM ledger_events WHERE account_id = ANY(:accounts)"
                    " AND (stream_position, seq) <= (:position, :seq)"
                    " ORDER BY stream_position, seq"
                ),
                {"accounts": accounts, "position": position, "seq": seq},
            )
        ]
    mine = set(accounts)
    got = [event_id for event_id, account, _ in received if account in mine]
    if got != stored:
        twice = len(got) - len(set(got))
        missing = len(set(stored) - set(got))
        report.violation(
            f"the stream is not the outbox: {len(got)} received, {len(stored)} stored,"
            f" {missing} missing, {twice} twice"
        )
    report.checks.append(
        f"stream: {len(got)} events of the run's accounts received across the faults,"
        " each once and in the outbox's order"
    )


@dataclass(frozen=True)
class Endpoint:
    """A webhook endpoint of the run: what it is called in the report, the secret its
    webhooks are signed with, and the types it gets (None: all)."""

    name: str
    secret: str
    types: frozenset[str] | None = None


def check_webhooks(
    endpoint: Endpoint,
    received: list[Received],
    stream: list[tuple[str, str, str]],
    accounts: list[str],
    report: Report,
    *,
    stream_types: dict[str, str],
    incomplete: int = 0,
) -> None:
    """An endpoint's webhooks received during the run against the stream's events:
    each verifies with its secret, is an event the stream carried, of a type the endpoint
    gets, and every such event of the run's accounts from the first delivered on arrived
    (at least once), each account's first deliveries in the stream's order (the order
    promised: per account; accounts go out side by side). Reports the time from each
    event to its first arrival, faults included."""
    streamed = {event_id: index for index, (event_id, _, _) in enumerate(stream)}
    mine = set(accounts)
    delivered: list[str] = []
    latencies: dict[str, float] = {}
    for hook in received:
        try:
            event = verify_webhook(
                hook.body, hook.signature, endpoint.secret, WEBHOOK_TOLERANCE_SECONDS
            )
        except WebhookSignatureError as error:
            report.violation(f"{endpoint.name}: a webhook that does not verify ({error})")
            continue
        if event["event_id"] not in streamed:
            report.violation(
                f"{endpoint.name}: a webhook of an event the stream never had: {event['event_id']}"
            )
        elif endpoint.types is not None and event["type"] not in endpoint.types:
            report.violation(f"{endpoint.name}: a webhook of a type it does not get")
        elif event["account_id"] in mine:
            delivered.append(event["event_id"])
            occurred = datetime.datetime.fromisoformat(event["occurred_at"])
            latencies.setdefault(event["event_id"], (hook.arrived_at - occurred).total_seconds())
    first = list(dict.fromkeys(delivered))
    account_of = {event_id: account for event_id, account, _ in stream}
    by_account: dict[str, list[int]] = {}
    for event_id in first:
        by_account.setdefault(account_of[event_id], []).append(streamed[event_id])
    if any(order != sorted(order) for order in by_account.values()):
        report.violation(
            f"{endpoint.name}: webhooks of an account delivered out of the stream's order"
        )
    if first:
        start = min(streamed[event_id] for event_id in first)
        expected = [
            e
            for e, account, _ in stream[start:]
            if account in mine and (endpoint.types is None or stream_types[e] in endpoint.types)
        ]
        missing = set(expected) - set(first)
        if missing:
            report.violation(
                f"{endpoint.name}: {len(missing)} events never delivered,"
                f" e.g. {next(iter(missing))}"
            )
    else:
        missing = set()
        report.violation(f"{endpoint.name}: no webhook of the run's accounts was delivered")
    kinds = "" if endpoint.types is None else f" ({', '.join(sorted(endpoint.types))} only)"
    report.checks.append(
        f"webhooks to {endpoint.name}{kinds}: {len(received)} POSTs, all verified"
        f" ({incomplete} more cut off mid-body by a kill, not taken);"
        f" {len(first)} events of the run's accounts delivered, in order per account"
        f" ({len(delivered) - len(first)} twice), {len(missing)} missing;"
        f" {_percentiles(list(latencies.values()))} from commit to arrival"
    )


def _percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "no deliveries"
    ranked = sorted(seconds)

    def at(fraction: float) -> float:
        return ranked[min(len(ranked) - 1, int(fraction * len(ranked)))]

    return f"p50 {at(0.5):.3f} s, p99 {at(0.99):.3f} s, max {ranked[-1]:.3f} s"


async def check_reconcile(engine: AsyncEngine, report: Report) -> None:
    async with engine.connect() as conn:
        found = await reconcile(conn)
    for d in found:
        report.violation(f"reconcile: {d.invariant}: {d.subject} {d.detail}")
    report.checks.append(f"reconcile: {len(found)} discrepancies")
