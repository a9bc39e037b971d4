"""`make run` on a .dev/ made before a development caller existed (`events`) gives that
caller its certificate, API key and permissions, and leaves the others as they were."""

from pathlib import Path

import pytest

from scripts import devcallers
from scripts.devpki import ensure_dev_pki
from scripts.devrun import ensure_dev_files
from service.access.callers import load_callers


def test_a_dev_caller_added_later_gets_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = {name: rpcs for name, rpcs in devcallers.DEV_RPCS.items() if name != "events"}
    with monkeypatch.context() as patch:
        patch.setattr(devcallers, "DEV_RPCS", older)
        ensure_dev_pki(tmp_path / "pki", callers=tuple(older))
        devcallers.ensure_dev_callers(tmp_path / "callers.toml")
    before = (tmp_path / "pki" / "ops.pem").read_bytes()
    assert "events" not in load_callers(tmp_path / "callers.toml").by_name

    ensure_dev_files(tmp_path)
    ensure_dev_files(tmp_path)  # a second start changes nothing more

    callers = load_callers(tmp_path / "callers.toml").by_name
    assert set(callers) == set(devcallers.DEV_RPCS)
    assert (tmp_path / "pki" / "events.pem").exists()
    assert (tmp_path / "pki" / "ops.pem").read_bytes() == before
