"""Configuration fails closed: `python -m service` outside development refuses
to start without each of its settings, naming what is missing and never a value."""

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from scripts.devpki import Issued, issue
from tests.access_support import caller_table, dev_ca, write_callers

REPOSITORY = Path(__file__).resolve().parents[2]
REFUSAL_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 60.0
# Values that must never appear in what the process prints.
DB_PASSWORD = "pg-Secret-42"
REDIS_PASSWORD = "redis-Secret-42"


def production_env(database_url: str, pki: Path) -> dict[str, str]:
    """A complete production configuration (that starts: see the last test)."""
    return {
        "CREDITS_ENV": "production",
        "CREDITS_DATABASE_URL": database_url,
        "CREDITS_GRPC_ADDR": "127.0.0.1:0",
        "CREDITS_TLS_CA_FILE": str(pki / "ca.pem"),
        "CREDITS_TLS_CERT_FILE": str(pki / "server.pem"),
        "CREDITS_TLS_KEY_FILE": str(pki / "server.key"),
        "CREDITS_CALLERS_FILE": str(pki / "callers.toml"),
    }


def refused(env: Mapping[str, str]) -> str:
    """Run the service with only `env` (a scrubbed environment); it must refuse to start.
    Returns what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        env={"PATH": os.environ["PATH"], **env},
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "credits service cannot start" in output
    assert "Traceback" not in output
    assert DB_PASSWORD not in output
    assert REDIS_PASSWORD not in output
    return output


@pytest.fixture
def env(pki: Path) -> dict[str, str]:
    """The complete configuration, with a database URL holding a password that the
    refusals must not print."""
    url = f"postgresql://credits:{DB_PASSWORD}@127.0.0.1:5432/credits"
    return {
        **production_env(url, pki),
        "CREDITS_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
    }


def test_nothing_configured_names_every_missing_setting() -> None:
    output = refused({"CREDITS_ENV": "production"})
    for name in (
        "CREDITS_DATABASE_URL",
        "CREDITS_GRPC_ADDR",
        "CREDITS_TLS_CA_FILE",
        "CREDITS_TLS_CERT_FILE",
        "CREDITS_TLS_KEY_FILE",
        "CREDITS_CALLERS_FILE",
    ):
        assert name in output


def test_no_env_at_all_is_production() -> None:
    assert "CREDITS_DATABASE_URL" in refused({})


@pytest.mark.parametrize(
    "missing",
    [
        "CREDITS_DATABASE_URL",
        "CREDITS_TLS_CA_FILE",
        "CREDITS_TLS_CERT_FILE",
        "CREDITS_TLS_KEY_FILE",
        "CREDITS_CALLERS_FILE",
        "CREDITS_GRPC_ADDR",
    ],
)
def test_each_missing_setting_is_named(env: dict[str, str], missing: str) -> None:
    del env[missing]
    output = refused(env)
    assert f"missing settings: {missing}" in output


def test_an_empty_setting_counts_as_missing(env: dict[str, str]) -> None:
    env["CREDITS_TLS_KEY_FILE"] = ""
    assert "missing settings: CREDITS_TLS_KEY_FILE" in refused(env)


def test_a_setting_naming_no_file_is_named_without_its_path(
    env: dict[str, str], tmp_path: Path
) -> None:
    env["CREDITS_TLS_KEY_FILE"] = str(tmp_path / "nowhere.key")
    output = refused(env)
    assert "CREDITS_TLS_KEY_FILE" in output
    assert "nowhere" not in output


def test_tls_mode_needs_every_callers_secret(
    env: dict[str, str], pki: Path, tmp_path: Path
) -> None:
    callers = write_callers(
        tmp_path / "callers.toml",
        caller_table("backend", ["Reserve"], api_keys=("k" * 43,)),
        caller_table("gateway", ["Grant"]),  # no api_key_sha256
    )
    env |= {"CREDITS_AUTH_MODE": "tls", "CREDITS_CALLERS_FILE": str(callers)}
    output = refused(env)
    assert "CREDITS_CALLERS_FILE" in output
    assert "api_key_sha256" in output
    assert "gateway" in output
    assert "backend" not in output.rpartition("missing for")[2]


@pytest.mark.parametrize(
    ("kind", "setting"),
    [
        ("expired", "CREDITS_TLS_CERT_FILE"),
        ("key of another certificate", "CREDITS_TLS_KEY_FILE"),
        ("not a CA", "CREDITS_TLS_CA_FILE"),
    ],
)
def test_unusable_tls_files_are_refused_at_start(
    env: dict[str, str], pki: Path, tmp_path: Path, kind: str, setting: str
) -> None:
    ca = dev_ca(pki)
    server = issue(ca, "server", server=True, expired=kind == "expired")
    if kind == "key of another certificate":
        server = Issued(server.cert_pem, issue(ca, "server", server=True).key_pem)
    server.write(tmp_path, "server")
    env["CREDITS_TLS_CERT_FILE"] = str(tmp_path / "server.pem")
    env["CREDITS_TLS_KEY_FILE"] = str(tmp_path / "server.key")
    if kind == "not a CA":
        env["CREDITS_TLS_CA_FILE"] = str(tmp_path / "server.key")
    output = refused(env)
    assert setting in output
    assert "PRIVATE KEY" not in output


def test_tls_mode_needs_the_server_certificate_but_no_ca(env: dict[str, str]) -> None:
    env["CREDITS_AUTH_MODE"] = "tls"
    del env["CREDITS_TLS_CA_FILE"], env["CREDITS_TLS_CERT_FILE"]
    output = refused(env)
    assert "missing settings: CREDITS_TLS_CERT_FILE" in output
    assert "CREDITS_TLS_CA_FILE" not in output


def test_a_broken_callers_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "callers.toml"
    broken.write_text(f'[callers.backend]\napi_key_sha256 = "{DB_PASSWORD}\n')
    env["CREDITS_CALLERS_FILE"] = str(broken)
    assert "CREDITS_CALLERS_FILE" in refused(env)


@pytest.mark.parametrize(
    "overrides",
    [
        {"CREDITS_AUTH_MODE": "insecure", "CREDITS_ALLOW_INSECURE": "1"},
        {"CREDITS_AUTH_MODE": "insecure", "CREDITS_ENV": "development"},
        {
            "CREDITS_AUTH_MODE": "insecure",
            "CREDITS_ENV": "development",
            "CREDITS_ALLOW_INSECURE": "1",
            "CREDITS_GRPC_ADDR": "0.0.0.0:50051",
        },
    ],
    ids=["production", "not allowed", "not loopback"],
)
def test_insecure_mode_is_refused_unless_development_allowed_and_loopback(
    env: dict[str, str], overrides: dict[str, str]
) -> None:
    assert "CREDITS_AUTH_MODE=insecure needs" in refused(env | overrides)


def test_a_redis_url_of_another_scheme_is_refused_without_its_value(env: dict[str, str]) -> None:
    env["CREDITS_REDIS_URL"] = f"http://:{REDIS_PASSWORD}@127.0.0.1:6379"
    assert "CREDITS_REDIS_URL" in refused(env)


def test_the_complete_configuration_starts(database_url: str, pki: Path) -> None:
    """The control: with everything set the same scrubbed start serves, so the refusals
    above are refusals of what each one leaves out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env={"PATH": os.environ["PATH"], **production_env(database_url, pki)},
        cwd=REPOSITORY,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if '"msg": "serving"' in line:
                break
        else:
            pytest.fail("the service stopped without serving")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=START_TIMEOUT_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
