"""The events' settings: CREDITS_EVENT_RETENTION_DAYS (30 unless set, at least 1) and
CREDITS_BALANCE_ALERT_THRESHOLDS (none unless set; highest first; bad lists refused with
the setting's name)."""

from pathlib import Path

import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import settings


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev")
    ensure_dev_pki(directory / "pki")
    ensure_dev_callers(directory / "callers.toml")
    return directory


def load(dev_dir: Path, **env: str) -> settings.Settings:
    return settings.load({"CREDITS_ENV": "development", "CREDITS_DEV_DIR": str(dev_dir), **env})


def test_the_defaults(dev_dir: Path) -> None:
    loaded = load(dev_dir)
    assert loaded.event_retention_days == 30
    assert loaded.balance_alert_thresholds == ()


def test_thresholds_are_read_highest_first(dev_dir: Path) -> None:
    loaded = load(
        dev_dir, CREDITS_BALANCE_ALERT_THRESHOLDS="100, 1000", CREDITS_EVENT_RETENTION_DAYS="7"
    )
    assert loaded.balance_alert_thresholds == (1000, 100)
    assert loaded.event_retention_days == 7


@pytest.mark.parametrize("value", ["ten", "0", "-5", "100,100", ",".join(["1"] * 11)])
def test_bad_thresholds_are_refused(dev_dir: Path, value: str) -> None:
    with pytest.raises(settings.SettingsError, match="CREDITS_BALANCE_ALERT_THRESHOLDS"):
        load(dev_dir, CREDITS_BALANCE_ALERT_THRESHOLDS=value)


def test_a_retention_under_a_day_is_refused(dev_dir: Path) -> None:
    with pytest.raises(settings.SettingsError, match="CREDITS_EVENT_RETENTION_DAYS"):
        load(dev_dir, CREDITS_EVENT_RETENTION_DAYS="0")
