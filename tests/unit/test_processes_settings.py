"""The process count and the pools: one process per core by default when Redis counts
the rate limits (one process without it, and several without it are refused), pools that
share one default budget of connections, and a limiter that counts a call against all of
its limits or none."""

import dataclasses
import signal
from pathlib import Path

import limits as ratelimits
import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import processes, settings
from service.access import errors
from service.access.ratelimit import Check, Limiter
from service.settings import SettingsError


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev")
    ensure_dev_pki(directory / "pki")
    ensure_dev_callers(directory / "callers.toml")
    return directory


def load(dev_dir: Path, **env: str) -> settings.Settings:
    return settings.load({"CREDITS_ENV": "development", "CREDITS_DEV_DIR": str(dev_dir), **env})


REDIS_URL = "redis://127.0.0.1:6379/0"


def test_one_process_per_core_by_default_with_redis(dev_dir: Path) -> None:
    assert load(dev_dir, CREDITS_REDIS_URL=REDIS_URL).processes == settings.cores()


def test_one_process_by_default_without_redis(dev_dir: Path) -> None:
    assert load(dev_dir).processes == 1


@pytest.mark.parametrize("environment", ["development", "production"])
def test_several_processes_without_redis_are_refused(dev_dir: Path, environment: str) -> None:
    with pytest.raises(SettingsError, match="CREDITS_PROCESSES above 1 needs CREDITS_REDIS_URL"):
        settings.check(
            dataclasses.replace(load(dev_dir), env=environment, processes=2, redis_url=None)
        )


@pytest.mark.parametrize(("count", "pool"), [("1", 32), ("2", 16), ("3", 10), ("64", 1)])
def test_the_default_pools_share_one_budget(dev_dir: Path, count: str, pool: int) -> None:
    loaded = load(dev_dir, CREDITS_PROCESSES=count, CREDITS_REDIS_URL=REDIS_URL)
    assert loaded.db_pool_size == pool
    # Every process has at least one connection, even beyond the budget.
    budget = max(settings.DB_CONNECTIONS_DEFAULT, loaded.processes)
    assert loaded.processes * loaded.db_pool_size <= budget


def test_a_configured_pool_is_per_process(dev_dir: Path) -> None:
    loaded = load(
        dev_dir, CREDITS_PROCESSES="4", CREDITS_DB_POOL_SIZE="8", CREDITS_REDIS_URL=REDIS_URL
    )
    assert (loaded.processes, loaded.db_pool_size) == (4, 8)


@pytest.mark.parametrize("count", ["0", "-1", "257", "two"])
def test_a_bad_process_count_is_refused(dev_dir: Path, count: str) -> None:
    with pytest.raises(SettingsError, match="CREDITS_PROCESSES"):
        load(dev_dir, CREDITS_PROCESSES=count, CREDITS_REDIS_URL=REDIS_URL)


def test_only_the_worker_flag_makes_a_worker() -> None:
    assert processes.worker_of(["--worker", "3", "7"]) == processes.Worker(3, 7)
    assert processes.worker_of([]) is None
    assert processes.worker_of(["--worker", "3"]) is None
    assert processes.worker_of(["--worker", "x", "7"]) is None


def check(limit: str, *key: str) -> Check:
    return Check(tuple(ratelimits.parse_many(limit)), "caller:test/Reserve", key)


async def hits_allowed(limiter: Limiter, tries: int, *checks: Check) -> int:
    for allowed in range(tries):
        try:
            await limiter.hit(*checks)
        except errors.RateLimited:
            return allowed
    return tries


async def test_one_process_alone_enforces_the_whole_limit() -> None:
    assert await hits_allowed(Limiter(None), 10, check("4/minute", "caller", "test")) == 4


async def test_a_call_refused_by_one_limit_spends_none_of_the_others() -> None:
    limiter = Limiter(None)
    wide, narrow = check("4/minute", "wide"), check("1/minute", "narrow")
    assert await hits_allowed(limiter, 10, wide, narrow) == 1
    # The refused calls did not count against `wide`: 3 of its 4 are left.
    assert await hits_allowed(limiter, 10, wide) == 3


async def test_a_refusal_names_the_first_of_the_calls_spent_limits() -> None:
    limiter = Limiter(None)
    first = Check(tuple(ratelimits.parse_many("1/minute")), "first", ("first",))
    second = Check(tuple(ratelimits.parse_many("1/minute")), "second", ("second",))
    await limiter.hit(first, second)
    with pytest.raises(errors.RateLimited) as refused:
        await limiter.hit(first, second)
    assert refused.value.subject == "first"
    with pytest.raises(errors.RateLimited) as refused:
        await limiter.hit(check("1/minute", "fresh"), second)
    assert refused.value.subject == "second"


def test_a_sighup_before_any_worker_started_is_held(dev_dir: Path) -> None:
    """The supervisor says "supervising" before it starts its workers: a SIGHUP sent
    then (a rotation during a start) is held for the workers, not dropped."""
    config = load(dev_dir, CREDITS_PROCESSES="2", CREDITS_REDIS_URL=REDIS_URL)
    supervisor = processes.Supervisor(config, {"CREDITS_GRPC_ADDR": config.grpc_addr})
    supervisor.forward(signal.SIGHUP, None)
    assert supervisor.workers == []
    assert supervisor.reload_held
