"""Field checks and page tokens: fast, no server."""

import datetime

import pytest

from gateway import events
from service.ledger import limits, paging
from service.ledger.commands import WireTime
from service.ledger.failures import InvalidRequest
from service.ledger.validation import Check, clamp_page_size, request_hash


def violations(check: Check) -> list[str]:
    return [v.field for v in check.violations]


@pytest.mark.parametrize(
    ("ttl", "valid"),
    [
        (WireTime(1, 0), True),
        (WireTime(0, 999_999_999), False),
        (WireTime(86_400, 0), True),
        (WireTime(86_400, 1), False),
        (WireTime(10**15, 0), False),
        (WireTime(-(10**15), 0), False),
        (WireTime(60, 2 * 10**9), False),
        # protobuf's Duration: nanos take the sign of seconds.
        (WireTime(5, -999_999_999), False),
        (WireTime(2, -1), False),
        (WireTime(-5, 999_999_999), False),
        (WireTime(1, 999_999_999), True),
    ],
)
def test_ttl_bounds(ttl: WireTime, valid: bool) -> None:
    check = Check()
    check.ttl(ttl)
    assert (violations(check) == []) is valid


def test_an_absent_ttl_is_the_default() -> None:
    assert Check().ttl(None) == limits.RESERVATION_TTL_DEFAULT


@pytest.mark.parametrize(
    ("stamp", "valid"),
    [
        (WireTime(0, 0), True),
        (WireTime(253_402_300_799, 999_999_999), True),
        (WireTime(253_402_300_800, 0), False),
        (WireTime(2**62, 0), False),
        (WireTime(0, -1), False),
        (WireTime(1_700_000_000, -999_999_999), False),
        (WireTime(1_700_000_000, 10**9), False),
    ],
)
def test_timestamp_range(stamp: WireTime, valid: bool) -> None:
    check = Check()
    value = check.timestamp("expires_at", stamp)
    assert (value is not None) is valid
    assert (violations(check) == []) is valid


def test_text_refuses_nul_and_length() -> None:
    check = Check()
    check.text("description", "a\x00b", 10)
    check.text("reason", "x" * 11, 10)
    check.text("job_id", "fine", 10)
    assert violations(check) == ["description", "reason"]


@pytest.mark.parametrize("control", ["\x00", "\x1b", "\n", "\t", "\x7f", "\x9b", "\x85"])
def test_identifiers_refuse_c0_del_and_c1_controls(control: str) -> None:
    check = Check()
    check.identifier("job_id", f"job{control}1", 128)
    check.identifier("job_type", "story-é", 128)
    assert violations(check) == ["job_id"]


def test_free_text_may_hold_newlines_and_tabs() -> None:
    check = Check()
    check.text("description", "line one\n\tline two", 500)
    assert violations(check) == []


def test_metadata_names_each_bad_entry() -> None:
    check = Check()
    check.metadata(
        {"trace_id": "\x00", "secret": "x", "model": "m" * 257}, frozenset({"trace_id", "model"})
    )
    assert violations(check) == ["metadata[model]", "metadata[secret]", "metadata[trace_id]"]


def test_done_raises_every_violation_at_once() -> None:
    check = Check()
    check.account_id("bad id!")
    check.amount(0, 10)
    with pytest.raises(InvalidRequest) as raised:
        check.done()
    assert [v.field for v in raised.value.violations] == ["account_id", "amount"]


def test_request_hash_is_canonical() -> None:
    assert request_hash("grant", {"a": 1, "b": 2}) == request_hash("grant", {"b": 2, "a": 1})
    assert request_hash("grant", {"a": 1}) != request_hash("revoke", {"a": 1})


@pytest.mark.parametrize(("asked", "used"), [(0, 50), (-5, 1), (1, 1), (100, 100), (101, 100)])
def test_page_size_is_clamped(asked: int, used: int) -> None:
    assert clamp_page_size(asked) == used


def test_page_tokens_round_trip_and_refuse_another_account_or_list() -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    token = paging.encode("usage", "acct-1", [paging.timestamp_key(when), "x"])
    assert paging.decode(token, "usage", "acct-1", 2) == [paging.timestamp_key(when), "x"]
    for kind, account, count in (
        ("usage", "acct-2", 2),
        ("grants", "acct-1", 2),
        ("usage", "acct-1", 3),
    ):
        with pytest.raises(paging.BadToken):
            paging.decode(token, kind, account, count)


@pytest.mark.parametrize("value", ["0001-01-01T00:30+01:00", "2030-01-01T00:00:00", "tomorrow"])
def test_token_times_out_of_range_or_naive_are_bad(value: str) -> None:
    with pytest.raises(paging.BadToken):
        paging.parse_timestamp_key(value)


def test_the_gateway_checks_the_services_account_id_pattern() -> None:
    # The gateway imports no service code; it must agree with the service's one pattern.
    assert events.ACCOUNT_ID_PATTERN.pattern == limits.ACCOUNT_ID_REGEX
