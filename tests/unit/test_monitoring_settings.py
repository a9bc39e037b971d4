"""The monitoring settings: CREDITS_RECONCILE_INTERVAL_SECONDS (an hour unless set, 0
turns the schedule off, a negative or non-number refused) and CREDITS_JOB_TYPES (none
unless set, a bounded list)."""

from pathlib import Path

import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import settings
from service.ops import metrics


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev")
    ensure_dev_pki(directory / "pki")
    ensure_dev_callers(directory / "callers.toml")
    return directory


def load(dev_dir: Path, **env: str) -> settings.Settings:
    return settings.load({"CREDITS_ENV": "development", "CREDITS_DEV_DIR": str(dev_dir), **env})


def test_hourly_reconcile_and_no_job_types_unless_set(dev_dir: Path) -> None:
    loaded = load(dev_dir)
    assert loaded.reconcile_interval_seconds == 3600
    assert loaded.job_types == frozenset()


def test_the_interval_and_job_types_as_set_and_0_turns_the_schedule_off(dev_dir: Path) -> None:
    loaded = load(dev_dir, CREDITS_RECONCILE_INTERVAL_SECONDS="60", CREDITS_JOB_TYPES="a, b,,")
    assert (loaded.reconcile_interval_seconds, loaded.job_types) == (60.0, frozenset({"a", "b"}))
    assert load(dev_dir, CREDITS_RECONCILE_INTERVAL_SECONDS="0").reconcile_interval_seconds == 0


@pytest.mark.parametrize("value", ["-1", "hourly"])
def test_a_bad_interval_is_refused(dev_dir: Path, value: str) -> None:
    with pytest.raises(settings.SettingsError, match="CREDITS_RECONCILE_INTERVAL_SECONDS"):
        load(dev_dir, CREDITS_RECONCILE_INTERVAL_SECONDS=value)


def test_too_many_job_types_are_refused(dev_dir: Path) -> None:
    many = ",".join(f"type{n}" for n in range(settings.JOB_TYPES_MAX + 1))
    with pytest.raises(settings.SettingsError, match="CREDITS_JOB_TYPES"):
        load(dev_dir, CREDITS_JOB_TYPES=many)


def test_a_job_type_outside_the_list_is_labelled_other() -> None:
    known = frozenset({"render"})
    assert metrics.job_type_label("render", known) == "render"
    assert metrics.job_type_label("anything-a-caller-sends", known) == metrics.OTHER_JOB_TYPE
