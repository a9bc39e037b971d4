"""The clock's settings: the test-only skew is honoured in development and refused in
production (never silently ignored), and the measurement's bounds are positive numbers
of seconds."""

from pathlib import Path

import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import settings
from service.settings import TEST_CLOCK_SKEW_SETTING, SettingsError


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev")
    ensure_dev_pki(directory / "pki")
    ensure_dev_callers(directory / "callers.toml")
    return directory


def development(dev_dir: Path, **env: str) -> dict[str, str]:
    return {"CREDITS_ENV": "development", "CREDITS_DEV_DIR": str(dev_dir), **env}


def production(dev_dir: Path, **env: str) -> dict[str, str]:
    pki = dev_dir / "pki"
    return {
        "CREDITS_ENV": "production",
        "CREDITS_DATABASE_URL": "postgresql://u@127.0.0.1:5432/credits",
        "CREDITS_GRPC_ADDR": "127.0.0.1:0",
        "CREDITS_TLS_CA_FILE": str(pki / "ca.pem"),
        "CREDITS_TLS_CERT_FILE": str(pki / "server.pem"),
        "CREDITS_TLS_KEY_FILE": str(pki / "server.key"),
        "CREDITS_CALLERS_FILE": str(dev_dir / "callers.toml"),
        **env,
    }


def test_no_skew_and_the_default_bounds_unless_set(dev_dir: Path) -> None:
    loaded = settings.load(production(dev_dir))
    assert loaded.test_clock_skew_seconds == 0.0
    assert loaded.clock_sync_interval_seconds == settings.CLOCK_SYNC_INTERVAL_SECONDS_DEFAULT
    assert loaded.clock_error_max_seconds == settings.CLOCK_ERROR_MAX_SECONDS_DEFAULT


@pytest.mark.parametrize("skew", ["30", "-30", "0.5"])
def test_development_honours_the_test_skew(dev_dir: Path, skew: str) -> None:
    loaded = settings.load(development(dev_dir, **{TEST_CLOCK_SKEW_SETTING: skew}))
    assert loaded.test_clock_skew_seconds == float(skew)


def test_production_refuses_the_test_skew(dev_dir: Path) -> None:
    with pytest.raises(SettingsError, match=TEST_CLOCK_SKEW_SETTING):
        settings.load(production(dev_dir, **{TEST_CLOCK_SKEW_SETTING: "30"}))


def test_a_skew_that_is_no_number_is_refused(dev_dir: Path) -> None:
    with pytest.raises(SettingsError, match=TEST_CLOCK_SKEW_SETTING):
        settings.load(development(dev_dir, **{TEST_CLOCK_SKEW_SETTING: "soon"}))


@pytest.mark.parametrize(
    "name", ["CREDITS_CLOCK_SYNC_INTERVAL_SECONDS", "CREDITS_CLOCK_ERROR_MAX_SECONDS"]
)
@pytest.mark.parametrize("value", ["0", "-1", "never"])
def test_a_bad_clock_bound_is_refused(dev_dir: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        settings.load(production(dev_dir, **{name: value}))
