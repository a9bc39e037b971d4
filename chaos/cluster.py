"""The system under test, all in one temporary directory: an embedded PostgreSQL, a
redis-server, two `python -m service` processes on ephemeral ports and the Stripe
gateway, with a development PKI and callers file made for the run. Every process is
started and stopped here, so that the faults (chaos/faults.py) can act on them."""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pgserver
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chaos.receiver import (
    FILTERED_ENDPOINT_NAME,
    FILTERED_WEBHOOK_SECRET,
    FILTERED_WEBHOOK_TYPES,
    SERVICE_WEBHOOK_SECRET,
    WebhookReceiver,
)
from gateway.packages import write_development_table
from scripts.devcallers import ensure_dev_callers
from scripts.devpki import ensure_dev_pki
from service.store import database
from service.store.postgres import sqlalchemy_url

INSTANCES = 2
# Reserve is also limited per account; the run's few accounts take hundreds of calls a
# second between them, which the default (50/second) would mostly refuse.
RESERVE_RATE_PER_ACCOUNT = "5000/second"
# The sweeper runs often, so that it competes with the clients for the accounts' locks.
SWEEPER_INTERVAL_SECONDS = "1"
START_TIMEOUT_SECONDS = 60.0
HEALTH_POLL_SECONDS = 0.1
HEALTH_CALL_TIMEOUT_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 15.0
PG_CTL_TIMEOUT_SECONDS = 60
REDIS_START_TIMEOUT_SECONDS = 10.0
WEBHOOK_SECRET = "whsec_chaos_" + "x" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pki = directory / "pki"
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        ensure_dev_pki(self.pki)
        ensure_dev_callers(self.pki / "callers.toml")
        self.pg: Any = None
        self.admin_url = ""
        self.service_url = ""
        self.redis_port = free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        self.ports = [free_port() for _ in range(INSTANCES)]
        self.services: list[subprocess.Popen[bytes] | None] = [None] * INSTANCES
        self.gateway_port = free_port()
        self.gateway: subprocess.Popen[bytes] | None = None
        self.admin: AsyncEngine | None = None
        self.webhooks = WebhookReceiver()
        self.webhook_secret_file = directory / "service-webhook-secret"
        self.webhook_secret_file.write_text(SERVICE_WEBHOOK_SECRET + "\n")
        self.filtered_webhooks = WebhookReceiver()
        filtered_secret_file = directory / "filtered-webhook-secret"
        filtered_secret_file.write_text(FILTERED_WEBHOOK_SECRET + "\n")
        self.webhook_endpoints_file = directory / "webhook-endpoints.toml"
        self.webhook_endpoints_file.write_text(
            "[[endpoint]]\n"
            f'name = "{FILTERED_ENDPOINT_NAME}"\n'
            f'url = "{self.filtered_webhooks.url}"\n'
            f'secret_file = "{filtered_secret_file}"\n'
            f"types = {json.dumps(sorted(FILTERED_WEBHOOK_TYPES))}\n"
        )

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    # -- PostgreSQL -----------------------------------------------------------------

    def start_database(self) -> None:
        self.pg = pgserver.get_server(self.dir / "pgdata", cleanup_mode=None)
        self.admin_url = str(self.pg.get_uri())
        database.migrate(self.admin_url)
        self.service_url = asyncio.run(database.ensure_dev_login(self.admin_url))

    def pg_ctl(self, action: str) -> None:
        """restart (crash-like) or stop, from a process of its own (chaos/pgctl.py)."""
        subprocess.run(  # noqa: S603 (this interpreter, our own module)
            [sys.executable, "-m", "chaos.pgctl", str(self.dir / "pgdata"), action],
            check=True,
            timeout=PG_CTL_TIMEOUT_SECONDS,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def restart_database(self) -> None:
        self.pg_ctl("restart")

    async def terminate_service_connections(self) -> int:
        """pg_terminate_backend of every connection of the service's login."""
        engine = await self.admin_engine()
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE usename = :login AND pid <> pg_backend_pid()"
                ),
                {"login": database.DEV_LOGIN},
            )
            return len(rows.all())

    async def admin_engine(self) -> AsyncEngine:
        if self.admin is None:
            self.admin = create_async_engine(
                sqlalchemy_url(self.admin_url), isolation_level="AUTOCOMMIT", pool_pre_ping=True
            )
        return self.admin

    # -- Redis ----------------------------------------------------------------------

    def start_redis(self) -> None:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-redis-server.sh)")
        self.redis = subprocess.Popen(  # noqa: S603 (redis-server from PATH, fixed arguments)
            [
                redis_server,
                *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--protected-mode", "yes"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + REDIS_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.redis_port)) == 0:
                    return
            time.sleep(HEALTH_POLL_SECONDS)
        raise RuntimeError("redis-server did not start")

    def kill_redis(self) -> None:
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
            self.redis = None

    # -- the service and the gateway ------------------------------------------------

    def service_env(self, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
        return env | {
            "CREDITS_ENV": "production",
            "CREDITS_DATABASE_URL": self.service_url,
            "CREDITS_GRPC_ADDR": f"127.0.0.1:{port}",
            "CREDITS_TLS_CA_FILE": str(self.pki / "ca.pem"),
            "CREDITS_TLS_CERT_FILE": str(self.pki / "server.pem"),
            "CREDITS_TLS_KEY_FILE": str(self.pki / "server.key"),
            "CREDITS_CALLERS_FILE": str(self.pki / "callers.toml"),
            "CREDITS_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CREDITS_RESERVE_RATE_PER_ACCOUNT": RESERVE_RATE_PER_ACCOUNT,
            "CREDITS_SWEEPER_INTERVAL_SECONDS": SWEEPER_INTERVAL_SECONDS,
            # One process per instance: a SIGKILL then kills the instance, not a
            # supervisor whose workers would stop on their own time.
            "CREDITS_PROCESSES": "1",
            # Every event to the run's own receiver; one instance delivers at a time.
            "CREDITS_WEBHOOK_URL": self.webhooks.url,
            "CREDITS_WEBHOOK_SECRET_FILE": str(self.webhook_secret_file),
            # And some types to a second receiver, with a worker of its own.
            "CREDITS_WEBHOOK_ENDPOINTS_FILE": str(self.webhook_endpoints_file),
        }

    def start_service(self, index: int) -> None:
        log = (self.logs / f"service-{index}.log").open("ab")
        self.services[index] = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=self.service_env(self.ports[index]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill_service(self, index: int) -> None:
        process = self.services[index]
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.services[index] = None

    def start_gateway(self) -> None:
        secret = self.dir / "stripe-webhook-secret"
        secret.write_text(WEBHOOK_SECRET + "\n")
        packages = self.dir / "credit-packages.toml"
        write_development_table(packages)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
        env |= {
            "CREDITS_ENV": "production",
            "CREDITS_GATEWAY_ADDR": f"127.0.0.1:{self.gateway_port}",
            "CREDITS_GATEWAY_SERVICE_TARGET": self.addresses[0],
            "CREDITS_GATEWAY_SERVICE_NAME": "localhost",
            "CREDITS_GATEWAY_CA_FILE": str(self.pki / "ca.pem"),
            "CREDITS_GATEWAY_CERT_FILE": str(self.pki / "gateway.pem"),
            "CREDITS_GATEWAY_KEY_FILE": str(self.pki / "gateway.key"),
            "CREDITS_STRIPE_WEBHOOK_SECRET_FILE": str(secret),
            "CREDITS_GATEWAY_PACKAGES_FILE": str(packages),
        }
        log = (self.logs / "gateway.log").open("ab")
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    async def wait_serving(self, index: int) -> None:
        """Until the instance's health check says SERVING (a failed start raises)."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        async with self.channel("ops", self.addresses[index]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                process = self.services[index]
                if process is None or process.poll() is not None:
                    raise RuntimeError(f"service {index} exited during start-up; see its log")
                try:
                    answer = await health.Check(
                        health_pb2.HealthCheckRequest(), timeout=HEALTH_CALL_TIMEOUT_SECONDS
                    )
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(HEALTH_POLL_SECONDS)
        raise RuntimeError(f"service {index} did not become healthy")

    async def wait_gateway(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.gateway_port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(HEALTH_POLL_SECONDS)
        raise RuntimeError("the gateway did not start")

    def channel(self, caller: str, address: str) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(self.pki / "ca.pem").read_bytes(),
            private_key=(self.pki / f"{caller}.key").read_bytes(),
            certificate_chain=(self.pki / f"{caller}.pem").read_bytes(),
        )
        return grpc.aio.secure_channel(address, credentials)

    async def start(self) -> None:
        self.webhooks.start()
        self.filtered_webhooks.start()
        await asyncio.to_thread(self.start_database)
        self.start_redis()
        for index in range(INSTANCES):
            self.start_service(index)
        for index in range(INSTANCES):
            await self.wait_serving(index)
        self.start_gateway()
        await self.wait_gateway()

    async def stop(self) -> None:
        """Stops everything, whatever state the faults left it in."""
        processes = [p for p in [*self.services, self.gateway] if p is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.to_thread(process.wait, STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.services = [None] * INSTANCES
        self.gateway = None
        self.webhooks.stop()
        self.filtered_webhooks.stop()
        self.kill_redis()
        if self.admin is not None:
            await self.admin.dispose()
            self.admin = None
        if self.pg is not None:
            with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
                await asyncio.to_thread(self.pg_ctl, "stop")
            self.pg = None
