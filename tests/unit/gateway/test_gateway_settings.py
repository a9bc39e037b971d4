"""Settings: development conventions in development, every missing setting named (and
no value shown) anywhere else."""

from pathlib import Path

import pytest

from gateway.packages import write_development_table
from gateway.settings import (
    Address,
    SettingsError,
    load_settings,
    parse_address,
    split_secrets,
)
from scripts.devpki import ensure_dev_pki

DEV_SECRET = "whsec_development_0123456789"


@pytest.fixture
def dev_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory laid out as `make run` leaves it."""
    ensure_dev_pki(tmp_path / ".dev" / "pki")
    (tmp_path / ".dev" / "stripe-webhook-secret").write_text(DEV_SECRET + "\n")
    write_development_table(tmp_path / ".dev" / "credit-packages.toml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def production_env(tree: Path) -> dict[str, str]:
    pki = tree / ".dev" / "pki"
    return {
        "CREDITS_ENV": "production",
        "CREDITS_GATEWAY_SERVICE_TARGET": "credits.internal:50051",
        "CREDITS_GATEWAY_CA_FILE": str(pki / "ca.pem"),
        "CREDITS_GATEWAY_CERT_FILE": str(pki / "gateway.pem"),
        "CREDITS_GATEWAY_KEY_FILE": str(pki / "gateway.key"),
        "CREDITS_GATEWAY_PACKAGES_FILE": str(tree / ".dev" / "credit-packages.toml"),
        "CREDITS_STRIPE_WEBHOOK_SECRETS": "whsec_production_secret_value_1",
    }


def test_development_finds_everything_under_dot_dev(dev_tree: Path) -> None:
    settings = load_settings({"CREDITS_ENV": "development"})

    assert settings.environment == "development"
    assert settings.listen == Address("127.0.0.1", 8080)
    assert settings.service_target == "127.0.0.1:50051"
    assert settings.webhook_secrets == (DEV_SECRET,)
    assert settings.metrics == Address("127.0.0.1", 9465)
    assert set(settings.packages.by_name) == {"credits_1000", "credits_5000"}
    assert settings.cert_pem.startswith(b"-----BEGIN CERTIFICATE")
    assert DEV_SECRET not in repr(settings)


def test_any_setting_can_be_overridden_in_development(dev_tree: Path) -> None:
    settings = load_settings(
        {
            "CREDITS_ENV": "development",
            "CREDITS_GATEWAY_ADDR": "127.0.0.1:0",
            "CREDITS_GATEWAY_SERVICE_TARGET": "127.0.0.1:1234",
            "CREDITS_STRIPE_WEBHOOK_SECRETS": "whsec_second_secret_0123",
            "CREDITS_GATEWAY_ACCOUNT_METADATA_KEY": "account_id",
        }
    )

    assert settings.listen.port == 0
    assert settings.service_target == "127.0.0.1:1234"
    assert settings.webhook_secrets == ("whsec_second_secret_0123", DEV_SECRET)
    assert settings.account_metadata_key == "account_id"


def test_the_development_directory_can_be_moved(
    dev_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (dev_tree / ".dev").rename(dev_tree / "elsewhere")

    with pytest.raises(SettingsError):
        load_settings({"CREDITS_ENV": "development"})
    settings = load_settings({"CREDITS_ENV": "development", "CREDITS_DEV_DIR": "elsewhere"})
    assert settings.webhook_secrets == (DEV_SECRET,)


def test_production_names_every_missing_setting(dev_tree: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"CREDITS_ENV": "production"})

    assert raised.value.problems == [
        "CREDITS_GATEWAY_SERVICE_TARGET is not set",
        "CREDITS_GATEWAY_CA_FILE is not set",
        "CREDITS_GATEWAY_CERT_FILE is not set",
        "CREDITS_GATEWAY_KEY_FILE is not set",
        "CREDITS_GATEWAY_PACKAGES_FILE is not set",
        "no webhook secret: set CREDITS_STRIPE_WEBHOOK_SECRET_FILE or "
        "CREDITS_STRIPE_WEBHOOK_SECRETS",
    ]


def test_anything_but_development_is_production(dev_tree: Path) -> None:
    with pytest.raises(SettingsError):
        load_settings({})
    with pytest.raises(SettingsError):
        load_settings({"CREDITS_ENV": "dev"})


def test_production_starts_with_every_setting(dev_tree: Path) -> None:
    settings = load_settings(production_env(dev_tree))

    assert settings.environment == "production"
    assert settings.metrics is None
    assert settings.webhook_secrets == ("whsec_production_secret_value_1",)


def test_problems_never_show_a_value(dev_tree: Path) -> None:
    env = production_env(dev_tree)
    env["CREDITS_STRIPE_WEBHOOK_SECRETS"] = "whsec_short"
    env["CREDITS_GATEWAY_CA_FILE"] = "/nonexistent/secret-path.pem"
    env["CREDITS_GATEWAY_ADDR"] = "nonsense"

    with pytest.raises(SettingsError) as raised:
        load_settings(env)

    message = str(raised.value)
    assert "CREDITS_GATEWAY_CA_FILE does not name a readable PEM file" in message
    assert "CREDITS_GATEWAY_ADDR is not a host:port address" in message
    assert "a webhook secret is shorter than 16 characters" in message
    assert "whsec_short" not in message
    assert "secret-path" not in message
    assert "nonsense" not in message


def test_a_bad_package_table_stops_the_start(dev_tree: Path) -> None:
    (dev_tree / ".dev" / "credit-packages.toml").write_text(
        "[packages.a]\nprice = 10\ncurrency = 'usd'\nunits = 1\n"
        "[packages.b]\nprice = 10\ncurrency = 'usd'\nunits = 2\n"
    )

    with pytest.raises(SettingsError, match="same price"):
        load_settings({"CREDITS_ENV": "development"})


def test_a_secret_file_may_hold_the_old_and_the_new_secret(dev_tree: Path) -> None:
    (dev_tree / ".dev" / "stripe-webhook-secret").write_text(
        "whsec_old_secret_0123456789\nwhsec_new_secret_0123456789\n"
    )

    settings = load_settings({"CREDITS_ENV": "development"})

    assert settings.webhook_secrets == (
        "whsec_old_secret_0123456789",
        "whsec_new_secret_0123456789",
    )


def test_secrets_split_on_commas_and_newlines() -> None:
    assert split_secrets(" a , b\nc,,\n") == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", Address("127.0.0.1", 8080)),
        ("[::1]:9000", Address("::1", 9000)),
        ("10.1.2.3:0", Address("10.1.2.3", 0)),
        ("localhost", None),
        (":8080", None),
        ("host:http", None),
        ("host:70000", None),
    ],
)
def test_addresses_are_host_and_port(value: str, expected: Address | None) -> None:
    assert parse_address(value) == expected


STRIPE_KEY = "rk_test_restricted_charges_read_0123456789"


def test_without_a_stripe_api_key_failed_refunds_read_nothing(dev_tree: Path) -> None:
    settings = load_settings(production_env(dev_tree))

    assert (settings.stripe_api_key, settings.stripe_api_base) == ("", "https://api.stripe.com")


def test_the_stripe_api_key_is_read_from_its_file_and_never_shown(dev_tree: Path) -> None:
    key_file = dev_tree / "stripe-api-key"
    key_file.write_text(STRIPE_KEY + "\n")
    env = {
        **production_env(dev_tree),
        "CREDITS_GATEWAY_STRIPE_API_KEY_FILE": str(key_file),
        "CREDITS_GATEWAY_STRIPE_API_BASE": "http://127.0.0.1:12111/",
    }

    settings = load_settings(env)

    assert settings.stripe_api_key == STRIPE_KEY
    assert settings.stripe_api_base == "http://127.0.0.1:12111"
    assert STRIPE_KEY not in repr(settings)


@pytest.mark.parametrize(
    ("key_text", "base", "problem"),
    [
        (None, "", "CREDITS_GATEWAY_STRIPE_API_KEY_FILE does not name a readable file"),
        ("short", "", "CREDITS_GATEWAY_STRIPE_API_KEY_FILE does not hold one API key"),
        (f"{STRIPE_KEY} {STRIPE_KEY}", "", "does not hold one API key"),
        (STRIPE_KEY, "http://stripe.example.com", "CREDITS_GATEWAY_STRIPE_API_BASE is not"),
        (STRIPE_KEY, "https://api.stripe.com/v1", "CREDITS_GATEWAY_STRIPE_API_BASE is not"),
        (STRIPE_KEY, "ftp://127.0.0.1", "CREDITS_GATEWAY_STRIPE_API_BASE is not"),
    ],
)
def test_a_bad_stripe_api_setting_stops_the_start_without_showing_the_key(
    dev_tree: Path, key_text: str | None, base: str, problem: str
) -> None:
    key_file = dev_tree / "stripe-api-key"
    if key_text is not None:
        key_file.write_text(key_text)
    env = {**production_env(dev_tree), "CREDITS_GATEWAY_STRIPE_API_KEY_FILE": str(key_file)}
    if base:
        env["CREDITS_GATEWAY_STRIPE_API_BASE"] = base

    with pytest.raises(SettingsError) as caught:
        load_settings(env)

    assert any(problem in p for p in caught.value.problems)
    assert STRIPE_KEY not in str(caught.value)
