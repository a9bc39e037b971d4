"""The process count and the pools: one process per core by default, pools that share
one default budget of connections, and a rate limit shared by the processes that serve
one address when they have no Redis to count in together."""

import signal
from pathlib import Path

import limits as ratelimits
import pytest

from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service import processes, settings
from service.access import errors
from service.access.ratelimit import Limiter
from service.settings import SettingsError


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev")
    ensure_dev_pki(directory / "pki")
    ensure_dev_callers(directory / "callers.toml")
    return directory


def load(dev_dir: Path, **env: str) -> settings.Settings:
    return settings.load({"CREDITS_ENV": "development", "CREDITS_DEV_DIR": str(dev_dir), **env})


def test_one_process_per_core_by_default(dev_dir: Path) -> None:
    assert load(dev_dir).processes == settings.cores()


@pytest.mark.parametrize(("count", "pool"), [("1", 32), ("2", 16), ("3", 10), ("64", 1)])
def test_the_default_pools_share_one_budget(dev_dir: Path, count: str, pool: int) -> None:
    loaded = load(dev_dir, CREDITS_PROCESSES=count)
    assert loaded.db_pool_size == pool
    # Every process has at least one connection, even beyond the budget.
    budget = max(settings.DB_CONNECTIONS_DEFAULT, loaded.processes)
    assert loaded.processes * loaded.db_pool_size <= budget


def test_a_configured_pool_is_per_process(dev_dir: Path) -> None:
    loaded = load(dev_dir, CREDITS_PROCESSES="4", CREDITS_DB_POOL_SIZE="8")
    assert (loaded.processes, loaded.db_pool_size) == (4, 8)


@pytest.mark.parametrize("count", ["0", "-1", "257", "two"])
def test_a_bad_process_count_is_refused(dev_dir: Path, count: str) -> None:
    with pytest.raises(SettingsError, match="CREDITS_PROCESSES"):
        load(dev_dir, CREDITS_PROCESSES=count)


def test_only_the_worker_flag_makes_a_worker() -> None:
    assert processes.worker_of(["--worker", "3", "7"]) == processes.Worker(3, 7)
    assert processes.worker_of([]) is None
    assert processes.worker_of(["--worker", "3"]) is None
    assert processes.worker_of(["--worker", "x", "7"]) is None


async def hits_allowed(limiter: Limiter, limit: str, tries: int) -> int:
    items = tuple(ratelimits.parse_many(limit))
    for allowed in range(tries):
        try:
            await limiter.hit(items, "caller:test/Reserve", "caller", "test", "Reserve")
        except errors.RateLimited:
            return allowed
    return tries


async def test_one_process_alone_enforces_the_whole_limit() -> None:
    assert await hits_allowed(Limiter(None), "4/minute", 10) == 4


async def test_processes_without_redis_each_enforce_their_share() -> None:
    # Two processes allow 2 each: together never more than the limit of 4.
    assert await hits_allowed(Limiter(None, sharing=2), "4/minute", 10) == 2
    assert await hits_allowed(Limiter(None, sharing=3), "4/minute", 10) == 1


async def test_a_share_is_at_least_one_call() -> None:
    assert await hits_allowed(Limiter(None, sharing=8), "4/minute", 10) == 1


def test_a_sighup_before_any_worker_started_is_held(dev_dir: Path) -> None:
    """The supervisor says "supervising" before it starts its workers: a SIGHUP sent
    then (a rotation during a start) is held for the workers, not dropped."""
    config = load(dev_dir, CREDITS_PROCESSES="2")
    supervisor = processes.Supervisor(config, {"CREDITS_GRPC_ADDR": config.grpc_addr})
    supervisor.forward(signal.SIGHUP, None)
    assert supervisor.workers == []
    assert supervisor.reload_held
