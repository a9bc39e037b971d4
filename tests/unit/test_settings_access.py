"""The access settings: authentication modes, the callers file, rate limits, Redis."""

import dataclasses
from pathlib import Path

import pytest
from google.rpc import error_details_pb2, status_pb2

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import settings
from service.access import errors
from service.rpc import admission, server
from service.rpc.health import ANONYMOUS_WATCHES_MAX
from service.settings import AuthMode, SettingsError


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make run` writes: the PKI and the callers file."""
    directory = tmp_path_factory.mktemp("dev")
    ensure_dev_pki(directory / "pki")
    ensure_dev_callers(directory / "callers.toml")
    return directory


def load(dev_dir: Path, **env: str) -> settings.Settings:
    return settings.load({"CREDITS_ENV": "development", "CREDITS_DEV_DIR": str(dev_dir), **env})


def test_development_defaults(dev_dir: Path) -> None:
    loaded = load(dev_dir)
    assert loaded.auth_mode is AuthMode.MTLS
    assert loaded.callers_file == dev_dir / "callers.toml"
    assert set(loaded.callers.by_name) == {"backend", "gateway", "ops", "events"}
    assert loaded.redis_url is None
    assert [str(i) for i in loaded.reserve_rate_per_account] == ["50 per 1 second"]


def test_production_has_the_same_per_account_default(dev_dir: Path) -> None:
    pki = dev_dir / "pki"
    loaded = settings.load(
        {
            "CREDITS_DATABASE_URL": "postgresql://db/credits",
            "CREDITS_GRPC_ADDR": "0.0.0.0:50051",
            "CREDITS_TLS_CA_FILE": str(pki / "ca.pem"),
            "CREDITS_TLS_CERT_FILE": str(pki / "server.pem"),
            "CREDITS_TLS_KEY_FILE": str(pki / "server.key"),
            "CREDITS_CALLERS_FILE": str(dev_dir / "callers.toml"),
        }
    )
    assert loaded.env == "production"
    assert [str(i) for i in loaded.reserve_rate_per_account] == ["50 per 1 second"]


def test_tls_mode_uses_no_ca(dev_dir: Path) -> None:
    loaded = load(dev_dir, CREDITS_AUTH_MODE="tls")
    assert loaded.tls_ca_file is None
    assert loaded.tls_cert_file == dev_dir / "pki" / "server.pem"


def test_insecure_mode_uses_no_tls_files(dev_dir: Path) -> None:
    loaded = load(dev_dir, CREDITS_AUTH_MODE="insecure", CREDITS_ALLOW_INSECURE="1")
    assert (loaded.tls_ca_file, loaded.tls_cert_file, loaded.tls_key_file) == (None, None, None)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CREDITS_AUTH_MODE": "plaintext"}, "CREDITS_AUTH_MODE must be"),
        ({"CREDITS_AUTH_MODE": "insecure", "CREDITS_ALLOW_INSECURE": "yes"}, "insecure needs"),
        ({"CREDITS_RESERVE_RATE_PER_ACCOUNT": "fast"}, "CREDITS_RESERVE_RATE_PER_ACCOUNT"),
        ({"CREDITS_RESERVE_RATE_PER_ACCOUNT": "0/second"}, "CREDITS_RESERVE_RATE_PER_ACCOUNT"),
        ({"CREDITS_REDIS_URL": "memcached://x:1"}, "CREDITS_REDIS_URL"),
    ],
)
def test_bad_access_settings_are_refused(dev_dir: Path, env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        load(dev_dir, **env)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.5.5.5:1", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.1:50051", False),
        ("service.internal:50051", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert settings.is_loopback(address) is loopback


def test_urls_that_may_hold_passwords_stay_out_of_reprs(dev_dir: Path) -> None:
    loaded = load(
        dev_dir,
        CREDITS_DATABASE_URL="postgresql://u:db-pass@h/d",
        CREDITS_REDIS_URL="redis://:redis-pass@h:6379/0",
    )
    assert "db-pass" not in repr(loaded)
    assert "redis-pass" not in repr(loaded)


def test_a_rate_limit_refusal_carries_retry_info_and_quota_failure() -> None:
    status = errors.for_known(errors.RateLimited("account:a", "50 per 1 second", 0.25))
    assert status is not None
    rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info, retry, quota = (
        error_details_pb2.ErrorInfo(),
        error_details_pb2.RetryInfo(),
        error_details_pb2.QuotaFailure(),
    )
    assert all(d.Unpack(m) for d, m in zip(rich.details, (info, retry, quota), strict=True))
    assert (info.reason, info.domain) == ("RATE_LIMITED", errors.DOMAIN)
    assert retry.retry_delay.ToMilliseconds() == 250
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("account:a", "50 per 1 second")
    ]


def test_admission_limits_are_checked_against_the_connection_grace(dev_dir: Path) -> None:
    loaded = load(dev_dir)
    admission.check_limits(loaded, server.MAX_CONNECTION_AGE_GRACE_MS / 1000)
    with pytest.raises(ValueError, match="REQUEST_MESSAGE_WAIT_SECONDS"):
        admission.check_limits(loaded, admission.REQUEST_MESSAGE_WAIT_SECONDS)


def test_grpcs_own_cap_leaves_room_beyond_every_budget(dev_dir: Path) -> None:
    loaded = load(dev_dir)
    budgets = loaded.max_concurrent_rpcs + admission.ANONYMOUS_CALLS_MAX
    budgets += ANONYMOUS_WATCHES_MAX
    assert admission.grpc_calls_max(loaded) >= budgets + admission.STREAMS_PER_CONNECTION_MAX


def test_one_connection_may_carry_a_callers_whole_budget(dev_dir: Path) -> None:
    """A caller's client keeps one connection: a budget above what one connection may
    carry would have HTTP/2 refuse the calls past it (UNAVAILABLE) instead."""
    loaded = load(dev_dir)
    grace_seconds = server.MAX_CONNECTION_AGE_GRACE_MS / 1000
    too_many = dataclasses.replace(
        loaded, max_concurrent_rpcs=admission.STREAMS_PER_CONNECTION_MAX + 1
    )
    with pytest.raises(ValueError, match="STREAMS_PER_CONNECTION_MAX"):
        admission.check_limits(too_many, grace_seconds)
