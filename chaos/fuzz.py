"""Fuzzing against the running service and gateway while the workload and the faults
go on. gRPC: random and boundary strings, unicode, NUL, non-UTF-8 bytes and repeated or
unknown fields (as raw wire bytes), random bytes as messages, zero, negative and huge
amounts, bad durations and timestamps, oversized metadata maps and messages, missing
fields, forged page tokens, unknown methods. Only documented codes may come back, never
INTERNAL or UNKNOWN. Refused requests must change nothing: every idempotency key of the
fuzzer's caller found in the database afterwards belongs to a request that was answered
OK (or never answered).

Webhook: random bodies, headers, signatures (valid ones too, over random events), sizes
past the 1 MiB limit, wrong paths and methods, and slow senders. Allowed answers: 2xx,
400, 404, 405, 413 and 503 (the service unreachable during a fault)."""

import asyncio
import base64
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import stripe
from google.protobuf import message
from google.protobuf.descriptor import FieldDescriptor
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.cluster import WEBHOOK_SECRET, Cluster
from chaos.report import Report
from credits.v1 import credits_pb2 as pb
from service.access import contract

SERVICE = "/credits.v1.CreditsService/"
CALL_TIMEOUT_SECONDS = 5.0
# A fuzzed stream (WatchEvents) is read this long, then ended by its deadline.
STREAM_SECONDS = 0.5
# The contract's server-streaming RPCs, called as streams.
STREAMING_RPCS = frozenset({"WatchEvents"})
# Codes a caller may get (docs/contract.md "Errors", plus what gRPC itself answers for an unknown
# method or an oversized message, and CANCELLED/DEADLINE_EXCEEDED during faults).
ALLOWED_CODES = {
    "OK",
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "UNIMPLEMENTED",
    "OUT_OF_RANGE",
}
# Answers that say nothing about whether the request was done (docs/contract.md "Errors"): CANCELLED
# is gRPC's answer to a call still in flight when its instance's shutdown grace ran out.
UNANSWERED = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}
WEBHOOK_ALLOWED = {200, 202, 204, 400, 404, 405, 413, 503}
# The connection ended with no answer to read: for a body over the limit, the gateway
# answered 413 and closed while the body was still arriving, and the reset that followed
# can discard the answer before it is read (TCP drops unread data on a reset). A refusal
# all the same, but only for bodies over the limit; for any other request, no answer.
RESET_WHILE_SENDING = -1
WEBHOOK_BODY_BYTES_MAX = 1024 * 1024
WEBHOOK_TIMEOUT_SECONDS = 10.0
SLOW_SEND_PAUSE_SECONDS = 0.05
# Every RPC of the contract, with the message class its requests are fuzzed from.
REQUEST_TYPES: dict[str, type[message.Message]] = {
    rpc: contract.request_type(rpc) for rpc in contract.RPC_NAMES
}
BOUNDARY_LENGTHS = (0, 1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257, 499, 500, 501, 5000)
ODD_TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\n\r",
    "ü",
    "\U0001d518\U0001d52b\U0001d526",  # mathematical letters
    "\u202e\u200b\ufeff",
    "😀" * 40,
    "' OR 1=1 --",
    "%s%n",
    "../../etc/passwd",
    "acct_42",
    "ACCT.ok:@-_",
    "\x7f",
    "\uff41\uff43\uff43\uff54",  # full-width letters
)
ODD_AMOUNTS = (0, -1, 1, 2, -(2**63), 2**63 - 1, 10**12, 10**12 + 1, 10**15, 10**18)


def random_text(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(ODD_TEXT)
    if pick < 0.6:
        return rng.choice("aZ9._:@-€\x00 ") * rng.choice(BOUNDARY_LENGTHS)
    alphabet = [chr(rng.randint(1, 0xD7FF)) for _ in range(8)]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))


def forged_token(rng: random.Random) -> str:
    fields: object = rng.choice(
        [
            ["usage", "0" * 16, "2030-01-01T00:00:00+00:00", str(uuid.uuid4())],
            ["grants", "x", str(uuid.uuid4())],
            ["entries", "", -1],
            [1, 2, 3],
            {"a": 1},
            ["usage", "0" * 16, "not a time", "not a uuid"],
            ["usage", "0" * 16, "9999-12-31T23:59:59", str(uuid.uuid4())],
        ]
    )
    raw = json.dumps(fields).encode()
    if rng.random() < 0.3:
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def fill(rng: random.Random, request: message.Message) -> None:
    """Sets some of the message's fields (others stay missing) to odd values."""
    for descriptor in request.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        name = descriptor.name
        try:
            if descriptor.message_type is not None:
                fill_message(rng, getattr(request, name), descriptor.message_type.name)
            elif descriptor.is_repeated:
                getattr(request, name).extend(rng.randint(-3, 50) for _ in range(rng.randint(0, 9)))
            else:
                setattr(request, name, odd_scalar(rng, name, descriptor.type))
        except (ValueError, TypeError):
            pass  # a value the Python library refuses to send; raw bytes cover those


def fill_message(rng: random.Random, field: Any, type_name: str) -> None:
    if type_name in ("Duration", "Timestamp"):
        field.seconds = rng.choice([0, -1, 1, 86400, 86401, 2**40, -(2**40), 253402300800])
        field.nanos = rng.choice([0, -1, 999_999_999, 10**9, -(10**9)])
    elif isinstance(field, message.Message):  # AccountSettings, FieldMask: their fields
        fill(rng, field)
    else:  # a map<string, string>
        for _ in range(rng.choice([1, 3, 16, 17, 200])):
            field[random_text(rng) or "k"] = random_text(rng)


def odd_scalar(rng: random.Random, name: str, field_type: int) -> object:
    if field_type == FieldDescriptor.TYPE_STRING:
        if name == "page_token":
            return forged_token(rng)
        if name == "idempotency_key" and rng.random() < 0.7:
            return f"fuzz-{uuid.uuid4().hex}"
        if name.endswith("_id") and name != "account_id" and rng.random() < 0.5:
            return str(uuid.uuid4())
        return random_text(rng)
    if field_type == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if field_type == FieldDescriptor.TYPE_INT64:
        return rng.choice(ODD_AMOUNTS)
    if field_type == FieldDescriptor.TYPE_INT32:
        return rng.choice([0, -1, 1, 100, 101, 2**31 - 1, -(2**31)])
    return rng.choice([0, 1, 2, 3, 4, 5, 99, -1])  # enums


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def raw_message(rng: random.Random) -> bytes:
    """Wire bytes the Python library would not produce: invalid UTF-8 in a string
    field, a field repeated, unknown fields, wrong wire types, truncation, noise."""
    kind = rng.randrange(6)
    bad_utf8 = rng.choice([b"\xff\xfe", b"\xc3\x28", b"acct\x80", b"\xed\xa0\x80", b"\xf8\x88"])
    if kind == 0:  # field 1 (account_id in every request) with invalid UTF-8
        return b"\x0a" + varint(len(bad_utf8)) + bad_utf8
    if kind == 1:  # field 1 twice (the last one wins), then field 2 as a varint
        return b"\x0a\x01a\x0a\x02bb" + b"\x10" + varint(rng.choice(ODD_AMOUNTS))
    if kind == 2:  # an unknown field number, and a field with the wrong wire type
        return b"\xf8\x07\x01" + b"\x0d\x00\x00\x00\x00"
    if kind == 3:  # truncated: a length beyond the end
        return b"\x0a\x7fabc"
    if kind == 4:  # every string field with invalid UTF-8
        return b"".join(
            bytes([(n << 3) | 2]) + varint(len(bad_utf8)) + bad_utf8 for n in range(1, 9)
        )
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


def key_of(method: str, raw: bytes) -> str | None:
    """The idempotency key a raw request carries, if it parses as its request at all."""
    try:
        request = REQUEST_TYPES[method].FromString(raw)
    except (message.DecodeError, KeyError):
        return None
    key = getattr(request, "idempotency_key", None)
    return key or None


class Fuzzer:
    def __init__(self, cluster: Cluster, report: Report, seed: int) -> None:
        self.cluster = cluster
        self.report = report
        self.rng = random.Random(f"{seed}-fuzz")
        # Keys of requests answered OK or not answered: the only ones that may be stored.
        self.keys_maybe_done: set[str] = set()
        self.payment_intents: list[str] = []

    def note(self, method: str, code: str, key: str | None) -> None:
        self.report.fuzzed += 1
        self.report.fuzz_statuses[f"{method} {code}"] += 1
        if code not in ALLOWED_CODES:
            self.report.unexpected(f"fuzz {method}: {code}")
        if key and (code == "OK" or code in UNANSWERED):
            self.keys_maybe_done.add(key)

    async def grpc_loop(self, stop: asyncio.Event) -> None:
        channels = [self.cluster.channel("ops", a) for a in self.cluster.addresses]
        backend = [self.cluster.channel("backend", a) for a in self.cluster.addresses]
        try:
            while not stop.is_set():
                await self.grpc_once(self.rng.choice(channels), self.rng.choice(backend))
        finally:
            for channel in [*channels, *backend]:
                await channel.close()

    async def grpc_once(self, ops: grpc.aio.Channel, backend: grpc.aio.Channel) -> None:
        rng = self.rng
        method = rng.choice([*REQUEST_TYPES, "NoSuchMethod"])
        channel = backend if rng.random() < 0.1 else ops
        pick = rng.random()
        if method == "NoSuchMethod" or pick < 0.3:
            raw = raw_message(rng)
        elif pick < 0.5 and method in ("Grant", "Reserve", "Revoke"):
            raw = self.nearly_valid(method).SerializeToString()
        else:
            request = REQUEST_TYPES[method]()
            fill(rng, request)
            raw = request.SerializeToString()
        if rng.random() < 0.02:
            raw += b"\x3a" + varint(70_000) + b"x" * 70_000  # past the message size limit
        metadata = None
        if rng.random() < 0.05:
            metadata = (("x-fuzz", "v" * rng.choice([1, 100, 4000])),)
        try:
            if method in STREAMING_RPCS:
                stream: Callable[..., Any] = channel.unary_stream(SERVICE + method)
                async for _ in stream(raw, timeout=STREAM_SECONDS, metadata=metadata):
                    pass
            else:
                call: Callable[..., Any] = channel.unary_unary(SERVICE + method)
                await call(raw, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)
            code = "OK"
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        key = key_of(method, raw) if channel is ops else None
        self.note(method, code, key)

    def nearly_valid(self, method: str) -> message.Message:
        """A valid request on one of the fuzzer's accounts with one field at or past a
        boundary, so that some are done and the rest are refused for that field alone:
        what is refused must have left nothing behind."""
        rng = self.rng
        account = f"fuzz-acct-{rng.randrange(10)}"
        key = f"fuzz-{uuid.uuid4().hex}"
        odd_length = rng.choice(BOUNDARY_LENGTHS)
        request: message.Message
        if method == "Grant":
            request = pb.GrantRequest(
                account_id=account,
                amount=rng.choice([1, 10**6, 10**12, 10**12 + 1]),
                source=pb.GRANT_SOURCE_PROMOTION,
                idempotency_key=key,
                description=rng.choice(ODD_TEXT)[:1] * odd_length,
                priority=rng.choice([0, 2**31 - 1, -(2**31)]),
                metadata={"trace_id": "t" * rng.choice([1, 256, 257])},
            )
        elif method == "Reserve":
            request = pb.ReserveRequest(
                account_id=account,
                amount=rng.choice([1, 5, 10**12, 10**12 + 1]),
                idempotency_key=key,
                job_id="j" * rng.choice([1, 128, 129]),
                description="\u00fc" * odd_length,
            )
        else:
            request = pb.RevokeRequest(
                account_id=account,
                grant_id=str(uuid.uuid4()),
                amount=rng.choice([0, 1, 10**12 + 1]),
                idempotency_key=key,
                reason="r" * odd_length,
            )
        return request

    async def webhook_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.webhook_once()

    async def webhook_once(self) -> None:
        rng = self.rng
        kind = rng.randrange(7)
        body = self.event_body() if kind in (0, 1, 2) else random_text(rng).encode()
        headers = {"Content-Type": rng.choice(["application/json", "text/plain", "x/\x7f"])}
        method, path = "POST", "/stripe/webhook"
        if kind in (0, 1):
            headers["Stripe-Signature"] = stripe.WebhookSignature.generate_signature_header(
                body.decode(), WEBHOOK_SECRET
            )
        elif kind == 2:
            headers["Stripe-Signature"] = rng.choice(
                ["t=1,v1=00", "", "garbage", f"t={int(time.time())},v1={'a' * 64}", "t=,v1="]
            )
        elif kind == 3:
            body = b"x" * (WEBHOOK_BODY_BYTES_MAX + rng.randint(1, 1000))
        elif kind == 4:
            method, path = rng.choice([("GET", "/stripe/webhook"), ("POST", "/nope"), ("PUT", "/")])
        status, failure = await self.http(method, path, headers, body, slow=kind == 5)
        if status == RESET_WHILE_SENDING:
            status = 413 if len(body) > WEBHOOK_BODY_BYTES_MAX else 0
        self.report.fuzzed += 1
        self.report.fuzz_statuses[f"webhook {status}"] += 1
        if status not in WEBHOOK_ALLOWED:
            self.report.unexpected(f"webhook kind {kind}: HTTP {status} {failure}".rstrip())

    def event_body(self) -> bytes:
        """A Stripe event: half of them well formed (purchases, refunds and disputes of
        the fuzzer's own purchases, with some fields odd), the rest noise in an event's
        shape."""
        rng = self.rng
        if rng.random() < 0.5:
            return json.dumps(self.shaped_event()).encode()
        obj: dict[str, Any] = {
            "id": random_text(rng),
            "object": rng.choice(["checkout.session", "charge", "dispute", 7, None]),
            "amount_total": rng.choice(ODD_AMOUNTS),
            "currency": rng.choice(["usd", "eur", "", None]),
            "client_reference_id": random_text(rng),
            "metadata": {"credit_package": rng.choice(["credits_1000", "nope", ""])},
            "payment_intent": random_text(rng),
        }
        event: Any = {"id": random_text(rng), "object": "event", "type": random_text(rng)}
        event["data"] = {"object": obj}
        if rng.random() < 0.1:
            event = rng.choice([[], "x", {"type": None}, {"data": None, "object": "event"}])
        return json.dumps(event).encode()

    def shaped_event(self) -> dict[str, Any]:
        rng = self.rng
        if not self.payment_intents or rng.random() < 0.4:
            intent = f"pi_{uuid.uuid4().hex}"
            self.payment_intents.append(intent)
            event_type = "checkout.session.completed"
            obj: dict[str, Any] = {
                "id": f"cs_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": rng.choice(["paid", "paid", "unpaid"]),
                "amount_total": rng.choice([1000, 1000, 999, 5000]),
                "currency": rng.choice(["usd", "usd", "eur"]),
                "client_reference_id": f"fuzz-hook-{rng.randrange(50)}",
                "metadata": {"credit_package": rng.choice(["credits_1000", "credits_5000"])},
                "payment_intent": intent,
            }
        elif rng.random() < 0.5:
            event_type = "charge.refunded"
            obj = {
                "id": f"ch_{uuid.uuid4().hex[:8]}",
                "object": "charge",
                "payment_intent": rng.choice(self.payment_intents),
                "amount": rng.choice([1000, 5000, 0]),
                "amount_refunded": rng.choice([0, 1, 500, 1000, 5000, 10**9]),
                "currency": "usd",
            }
        else:
            event_type = rng.choice(["charge.dispute.created", "charge.dispute.closed"])
            obj = {
                "id": f"dp_{uuid.uuid4().hex[:8]}",
                "object": "dispute",
                "payment_intent": rng.choice(self.payment_intents),
                "status": rng.choice(["won", "lost", "needs_response", "warning_needs_response"]),
            }
        for name in list(obj):
            if rng.random() < 0.05:
                obj[name] = rng.choice([None, 7, "", random_text(rng), [], {}])
        return {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {"object": obj},
        }

    async def http(
        self, method: str, path: str, headers: dict[str, str], body: bytes, *, slow: bool
    ) -> tuple[int, str]:
        """One HTTP/1.1 request over a plain socket (so that it can be sent slowly and
        with headers an HTTP library would refuse): the status, or 0 for no answer with
        what stopped it (the error's class, or the first line that was no status)."""
        try:
            async with asyncio.timeout(WEBHOOK_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.cluster.gateway_port
                )
                try:
                    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                    head += f"Content-Length: {len(body)}\r\n\r\n"
                    data = head.encode("utf-8", "replace") + body
                    await self.send(writer, data, slow)
                    try:
                        line = await reader.readline()
                    except ConnectionError:
                        # A reset, or a broken pipe the writing met and the reading is
                        # told of: the server closed while the body was still coming.
                        line = b""
                    if not line:
                        return RESET_WHILE_SENDING, ""
                finally:
                    writer.close()
        except (TimeoutError, OSError) as exc:
            return 0, type(exc).__name__
        parts = line.split()
        if len(parts) > 1 and parts[1].isdigit():
            return int(parts[1]), ""
        return 0, repr(line[:80])

    async def send(self, writer: asyncio.StreamWriter, data: bytes, slow: bool) -> None:
        """Writes the request; a server that answers early (413) and closes may cut the
        writing short, and its answer is still read."""
        piece = max(1, len(data) // 20) if slow else len(data)
        try:
            for i in range(0, len(data), piece):
                writer.write(data[i : i + piece])
                await writer.drain()
                if slow:
                    await asyncio.sleep(SLOW_SEND_PAUSE_SECONDS)
        except ConnectionError:
            pass

    async def check(self, engine: AsyncEngine, workload_accounts: list[str]) -> None:
        """Every key the fuzzer's caller left in the database is of a request that was
        answered OK or never answered: refused requests changed nothing. The workload's
        transfers use the same caller, on its own accounts (chaos/checks.py checks them)."""
        async with engine.connect() as conn:
            stored = {
                row.idempotency_key
                for row in await conn.execute(
                    text(
                        "SELECT idempotency_key FROM idempotency_keys WHERE caller = 'ops'"
                        " AND NOT account_id = ANY(:workload_accounts)"
                    ),
                    {"workload_accounts": workload_accounts},
                )
            }
        refused = stored - self.keys_maybe_done
        if refused:
            self.report.violation(f"{len(refused)} refused fuzz requests left a key behind")
        self.report.checks.append(
            f"fuzz: {len(stored)} stored keys of the fuzzer, all of requests answered OK"
        )
