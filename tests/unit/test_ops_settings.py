"""The operator's settings: CREDITS_PID_FILE (none unless set) and CREDITS_ACCESS_LOG
(off unless `on`, anything but on/off refused); and a pid file that names no running
service is never signalled."""

import signal
from pathlib import Path

import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import settings
from service.ops import pidfile


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev")
    ensure_dev_pki(directory / "pki")
    ensure_dev_callers(directory / "callers.toml")
    return directory


def load(dev_dir: Path, **env: str) -> settings.Settings:
    return settings.load({"CREDITS_ENV": "development", "CREDITS_DEV_DIR": str(dev_dir), **env})


def test_no_pid_file_and_no_access_log_unless_asked_for(dev_dir: Path) -> None:
    loaded = load(dev_dir)
    assert (loaded.pid_file, loaded.access_log) == (None, False)


def test_the_pid_file_and_the_access_log_as_set(dev_dir: Path, tmp_path: Path) -> None:
    loaded = load(dev_dir, CREDITS_PID_FILE=str(tmp_path / "s.pid"), CREDITS_ACCESS_LOG="on")
    assert (loaded.pid_file, loaded.access_log) == (tmp_path / "s.pid", True)


@pytest.mark.parametrize("value", ["yes", "1", "ON"])
def test_an_access_log_value_other_than_on_or_off_is_refused(dev_dir: Path, value: str) -> None:
    with pytest.raises(settings.SettingsError, match="CREDITS_ACCESS_LOG must be on or off"):
        load(dev_dir, CREDITS_ACCESS_LOG=value)


def test_a_pid_file_naming_a_process_that_is_not_the_service_is_not_signalled(
    tmp_path: Path,
) -> None:
    """After a kill -9 the pid may belong to any process by now: here, PID 1."""
    stale = tmp_path / "service.pid"
    stale.write_text("1\n")
    with pytest.raises(pidfile.PidFileError, match="which is not it"):
        pidfile.signal_service(stale, signal.SIGHUP)
    with pytest.raises(pidfile.PidFileError, match="does not name one"):
        pidfile.signal_service(tmp_path / "missing.pid", signal.SIGHUP)
