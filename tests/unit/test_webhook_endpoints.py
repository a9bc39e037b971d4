"""CREDITS_WEBHOOK_ENDPOINTS_FILE (service/webhook_endpoints.py): each endpoint checked
at start, its secret read; a bad file is one clear error naming the endpoint and the key,
and the service does not start."""

from pathlib import Path

import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import settings, webhook_endpoints
from service.ledger.model import EventType
from service.webhook_endpoints import EndpointsError


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text("s3cret\n")
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    return path


def table(
    secret_file: Path, name: str = "alerts", url: str = "https://a.example/h", **extra: str
) -> str:
    lines = [
        "[[endpoint]]",
        f'name = "{name}"',
        f'url = "{url}"',
        f'secret_file = "{secret_file}"',
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def test_the_endpoints_of_a_file_follow_the_url_endpoint(tmp_path: Path, secret_file: Path) -> None:
    first = webhook_endpoints.url_endpoint("https://hooks.example/all", secret_file)
    text = table(secret_file, types='["BALANCE_LOW", "BALANCE_RECOVERED"]') + table(
        secret_file, name="audit", url="https://b.example/h"
    )
    endpoints = webhook_endpoints.load(write(tmp_path, text), (first,))
    assert [e.name for e in endpoints] == ["hooks.example", "alerts", "audit"]
    assert endpoints[0].lock_key == webhook_endpoints.URL_ENDPOINT_LOCK_KEY
    assert endpoints[1].types == frozenset({EventType.BALANCE_LOW, EventType.BALANCE_RECOVERED})
    assert endpoints[2].types is None
    assert len({e.lock_key for e in endpoints}) == 3
    assert "a.example" not in repr(endpoints[1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must hold \\[\\[endpoint\\]\\] tables"),
        ("[[endpoint]\n", "is not TOML"),
        ("other = 1\n{table}", "must hold \\[\\[endpoint\\]\\] tables"),
        ('{table}colour = "red"\n', "endpoint 1: unknown keys \\['colour'\\]"),
        ("{table}types = []\n", "endpoint 1: types must list event types"),
        ('{table}types = ["BALANCE_LOWISH"]\n', "endpoint 1: types must list event types"),
        ("{table}{table}", "two webhook endpoints have the same name"),
    ],
)
def test_a_bad_file_is_refused_naming_what_is_wrong(
    tmp_path: Path, secret_file: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text.replace("{table}", table(secret_file)))
    with pytest.raises(EndpointsError, match=message):
        webhook_endpoints.load(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Alerts!"}, "endpoint 1: name must match"),
        ({"url": "ftp://a.example/h"}, "endpoint 1: url must be an http"),
        ({"url": "https://"}, "endpoint 1: url must be an http"),
    ],
)
def test_a_bad_endpoint_is_refused(
    tmp_path: Path, secret_file: Path, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(EndpointsError, match=message):
        webhook_endpoints.load(write(tmp_path, table(secret_file, **fields)))


def test_an_endpoint_whose_secret_cannot_be_read_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    for secret_file, problem in ((tmp_path / "missing", "cannot be read"), (empty, "is empty")):
        with pytest.raises(EndpointsError, match=f"endpoint 1: secret_file {problem}"):
            webhook_endpoints.load(write(tmp_path, table(secret_file)))


def test_more_endpoints_than_the_maximum_are_refused(tmp_path: Path, secret_file: Path) -> None:
    text = "".join(
        table(secret_file, name=f"e{n}", url=f"https://e{n}.example/h")
        for n in range(webhook_endpoints.ENDPOINTS_MAX + 1)
    )
    with pytest.raises(EndpointsError, match=f"at most {webhook_endpoints.ENDPOINTS_MAX}"):
        webhook_endpoints.load(write(tmp_path, text))


def test_the_settings_carry_every_endpoint_and_refuse_a_bad_file(
    tmp_path: Path, secret_file: Path
) -> None:
    dev = tmp_path / "dev"
    ensure_dev_pki(dev / "pki")
    ensure_dev_callers(dev / "callers.toml")
    env = {
        "CREDITS_ENV": "development",
        "CREDITS_DEV_DIR": str(dev),
        "CREDITS_WEBHOOK_URL": "http://127.0.0.1:9/hooks",
        "CREDITS_WEBHOOK_SECRET_FILE": str(secret_file),
        "CREDITS_WEBHOOK_ENDPOINTS_FILE": str(write(tmp_path, table(secret_file))),
    }
    loaded = settings.load(env)
    assert [e.name for e in loaded.webhook_endpoints] == ["127.0.0.1:9", "alerts"]
    (tmp_path / "endpoints.toml").write_text("nonsense")
    with pytest.raises(settings.SettingsError, match="CREDITS_WEBHOOK_ENDPOINTS_FILE"):
        settings.load(env)
