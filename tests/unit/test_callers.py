"""The callers file: its documented format, what it refuses, and API-key lookup."""

import secrets
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scripts.devcallers import DEV_RPCS, api_key_path, ensure_dev_callers
from service.access.callers import (
    API_KEY_CHARS_MAX,
    API_KEY_CHARS_MIN,
    RPC_NAMES,
    CallersError,
    api_key_digest,
    load_callers,
    missing_credentials,
    parse,
)
from service.access.callers import __doc__ as FORMAT_DOC

KEY = secrets.token_urlsafe(32)


def document(**backend: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "certificate_names": ["backend"],
        "api_key_sha256": [api_key_digest(KEY).hex()],
        "rpcs": ["Reserve", "GetBalance"],
        "rate_limits": {"*": "100/second"},
    }
    table.update(backend)
    return {"callers": {"backend": table}}


def refusal(doc: dict[str, Any]) -> str:
    with pytest.raises(CallersError) as caught:
        parse(doc)
    return str(caught.value)


def test_the_documented_example_parses() -> None:
    example = FORMAT_DOC.split("TOML, one table per caller (`CREDITS_CALLERS_FILE`):")[1]
    example = example.split("Secrets are stored")[0]
    lines = [line.removeprefix("    ") for line in example.splitlines()]
    text = "\n".join(lines).replace("<64 hex digits>", "0" * 64)
    callers = parse(tomllib.loads(text))
    backend = callers.by_name["backend"]
    assert backend.may_call("Reserve")
    assert not backend.may_call("Grant")
    assert [str(i) for i in backend.limits_for("Reserve")] == [
        "1000 per 1 second",
        "20000 per 1 minute",
    ]
    assert [str(i) for i in backend.limits_for("GetBalance")] == ["2000 per 1 second"]
    assert callers.by_certificate_name["backend"] is backend


def test_an_api_key_names_its_caller() -> None:
    callers = parse(document())
    found = callers.for_api_key(KEY)
    assert found is not None
    assert found.name == "backend"
    assert callers.for_api_key(secrets.token_urlsafe(32)) is None


def test_keys_outside_the_length_bounds_never_match() -> None:
    short = "x" * (API_KEY_CHARS_MIN - 1)
    long = "x" * (API_KEY_CHARS_MAX + 1)
    callers = parse(document(api_key_sha256=[api_key_digest(short).hex()]))
    assert callers.for_api_key(short) is None
    callers = parse(document(api_key_sha256=[api_key_digest(long).hex()]))
    assert callers.for_api_key(long) is None


def test_two_secrets_are_valid_during_a_rotation_and_no_more() -> None:
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    callers = parse(document(api_key_sha256=[api_key_digest(k).hex() for k in (old, new)]))
    assert callers.for_api_key(old) is callers.for_api_key(new) is not None
    three = [api_key_digest(secrets.token_urlsafe(32)).hex() for _ in range(3)]
    assert "at most 2" in refusal(document(api_key_sha256=three))


def test_star_allows_every_rpc() -> None:
    ops = parse(document(rpcs=["*"])).by_name["backend"]
    assert all(ops.may_call(rpc) for rpc in RPC_NAMES)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"rpcs": ["Reserv"]}, "unknown RPCs: Reserv"),
        ({"rpcs": "Reserve"}, "rpcs must be a list"),
        ({"rate_limits": {}}, "no entry"),
        ({"rate_limits": {"Reserve": "10/second"}}, "GetBalance"),
        ({"rate_limits": {"*": "lots"}}, "rate_limits.*"),
        ({"rate_limits": {"*": "0/second"}}, "rate_limits.*"),
        ({"rate_limits": {"Nope": "1/second", "*": "1/second"}}, "unknown RPC 'Nope'"),
        ({"api_key_sha256": ["ABC"]}, "64 lowercase hex"),
        ({"rpc": ["Reserve"]}, "unknown fields: rpc"),
        ({"certificate_names": ["x" * 254]}, "too long"),
    ],
)
def test_mistakes_are_refused_by_caller_and_field(change: dict[str, Any], expected: str) -> None:
    message = refusal(document(**change))
    assert expected in message
    assert "backend" in message


def test_a_secret_or_a_certificate_name_of_two_callers_is_refused() -> None:
    doc = document()
    doc["callers"]["other"] = dict(doc["callers"]["backend"], certificate_names=["other"])
    assert "api_key_sha256 is used twice" in refusal(doc)
    doc["callers"]["other"]["api_key_sha256"] = []
    doc["callers"]["other"]["certificate_names"] = ["backend"]
    assert "certificate name is used twice" in refusal(doc)


def test_file_level_mistakes_are_refused() -> None:
    assert "no [callers" in refusal({})
    assert "unknown top-level" in refusal({**document(), "caller": {}})
    assert "caller names" in refusal({"callers": {"bad name!": {}}})


def test_an_unreadable_or_invalid_file_says_so_without_its_content(tmp_path: Path) -> None:
    with pytest.raises(CallersError, match="cannot be read"):
        load_callers(tmp_path / "missing.toml")
    broken = tmp_path / "callers.toml"
    broken.write_text(f'[callers.backend]\napi_key_sha256 = "{KEY}\n')
    with pytest.raises(CallersError) as caught:
        load_callers(broken)
    assert KEY not in str(caught.value)


def test_missing_credentials_depend_on_the_mode() -> None:
    callers = parse(document(certificate_names=[]))
    assert missing_credentials(callers, certificates=True) == ["backend"]
    assert missing_credentials(callers, certificates=False) == []


def test_the_development_callers_match_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    ensure_dev_callers(path)
    callers = load_callers(path)
    assert set(callers.by_name) == {"backend", "gateway", "ops", "events"}
    for name, rpcs in DEV_RPCS.items():
        caller = callers.by_name[name]
        allowed = {rpc for rpc in RPC_NAMES if caller.may_call(rpc)}
        assert allowed == (RPC_NAMES if rpcs == ("*",) else set(rpcs))
        assert callers.by_certificate_name[name] is caller
        key = api_key_path(path, name).read_text().strip()
        assert callers.for_api_key(key) is caller
        assert api_key_path(path, name).stat().st_mode & 0o077 == 0
    # Generous: far above what the service can serve, so benchmarks are not throttled.
    assert all(i.amount >= 10_000 for i in callers.by_name["backend"].limits_for("Reserve"))
    # Written once: existing keys stay valid.
    before = path.read_bytes()
    ensure_dev_callers(path)
    assert path.read_bytes() == before
