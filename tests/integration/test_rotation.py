"""Key rotation without downtime: the callers file and the TLS files are reloaded while
serving (SIGHUP), connections and calls in flight keep going, and a file that cannot be
used is refused with a logged error while the one in force stays."""

import json
import logging
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from credits.v1 import credits_pb2 as pb
from credits.v1.credits_pb2_grpc import CreditsServiceStub as Stub
from scripts.devcallers import DEV_RPCS
from scripts.devpki import Issued, issue, make_ca
from service import reload
from service.ops import logs
from tests.access_support import caller_table, dev_ca, tls_channel, with_key, write_callers
from tests.service_process import ServiceProcess, production_env
from tests.support import CALL_TIMEOUT_SECONDS as T
from tests.support import RunningServer, error_details, free_port, new_id, start_server

# A handshake that is refused fails at once; no need to wait for the long test timeout.
REFUSED_CALL_TIMEOUT_SECONDS = 5.0
BACKEND_RPCS = list(DEV_RPCS["backend"])
OLD_KEY = secrets.token_urlsafe(32)
NEW_KEY = secrets.token_urlsafe(32)
UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
OK = (grpc.StatusCode.OK, "")


@dataclass
class Files:
    """The server's own copies of its TLS files and callers file, for the test to rewrite."""

    ca: Path
    cert: Path
    key: Path
    callers: Path

    def env(self) -> dict[str, str]:
        return {
            "CREDITS_TLS_CA_FILE": str(self.ca),
            "CREDITS_TLS_CERT_FILE": str(self.cert),
            "CREDITS_TLS_KEY_FILE": str(self.key),
            "CREDITS_CALLERS_FILE": str(self.callers),
        }

    def serve(self, server: Issued) -> None:
        self.cert.write_bytes(server.cert_pem)
        self.key.write_bytes(server.key_pem)


@pytest.fixture
def files(pki: Path, tmp_path: Path) -> Files:
    copied = Files(
        tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "c.toml"
    )
    for source, target in [
        ("ca.pem", copied.ca),
        ("server.pem", copied.cert),
        ("server.key", copied.key),
        ("callers.toml", copied.callers),
    ]:
        shutil.copyfile(pki / source, target)
    return copied


async def start_with(
    database_url: str, pki: Path, files: Files, auth_mode: str = "mtls"
) -> RunningServer:
    return await start_server(
        database_url,
        pki,
        CREDITS_TLS_CA_FILE=str(files.ca),
        CREDITS_TLS_CERT_FILE=str(files.cert),
        CREDITS_TLS_KEY_FILE=str(files.key),
        CREDITS_CALLERS_FILE=str(files.callers),
        CREDITS_AUTH_MODE=auth_mode,
    )


@pytest.fixture
async def mtls_server(database_url: str, pki: Path, files: Files) -> AsyncIterator[RunningServer]:
    server = await start_with(database_url, pki, files)
    try:
        yield server
    finally:
        await server.stop()


def reloads(file: str, result: str) -> float:
    labels = {"file": file, "result": result}
    return REGISTRY.get_sample_value("credits_config_reloads_total", labels) or 0.0


def channel_as(address: str, trusted_ca: Issued, client: Issued) -> grpc.aio.Channel:
    """An mTLS channel that trusts only `trusted_ca` for the server's certificate."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trusted_ca.cert_pem,
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )
    return grpc.aio.secure_channel(address, credentials)


async def balance_code(
    stub: Stub, metadata: tuple[tuple[str, str], ...] = (), seconds: float = T
) -> tuple[grpc.StatusCode, str]:
    try:
        await stub.GetBalance(
            pb.GetBalanceRequest(account_id=new_id()), metadata=metadata, timeout=seconds
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            return err.code(), ""  # a refused handshake: no call, no rich status
        return err.code(), error_details(err)[0]
    return OK


def the_refusal(caplog: pytest.LogCaptureFixture, file: str) -> dict[str, object]:
    """The logged refusal of a reload, as the JSON line the service writes."""
    refusals = [r for r in caplog.records if r.getMessage() == "reload refused"]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.ERROR
    entry: dict[str, object] = json.loads(logs.JsonFormatter().format(refusals[0]))
    assert entry["file"] == file
    return entry


async def test_a_new_certificate_is_served_after_a_reload_and_open_connections_keep_working(
    mtls_server: RunningServer, pki: Path, files: Files
) -> None:
    old_ca = dev_ca(pki)
    backend = issue(old_ca, "backend")
    new_ca = make_ca("rotated CA")
    async with channel_as(mtls_server.address, old_ca, backend) as before:
        assert await balance_code(Stub(before)) == OK
        watch = health_pb2_grpc.HealthStub(before).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=T
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

        # A rotation: the server's certificate from a new CA; the client CA file holds
        # both CAs so that the callers' certificates of the old one stay valid.
        files.serve(issue(new_ca, "server", server=True))
        files.ca.write_bytes(old_ca.cert_pem + new_ca.cert_pem)
        assert reload.reload_certificates(mtls_server.built)

        # The call in flight goes on, and the open connection (which trusts only the
        # old CA, so could not reconnect) still serves calls.
        await mtls_server.built.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert await balance_code(Stub(before)) == OK

    async with channel_as(mtls_server.address, new_ca, backend) as after:
        assert await balance_code(Stub(after)) == OK
    async with channel_as(mtls_server.address, old_ca, backend) as stale:
        code, _ = await balance_code(Stub(stale), seconds=REFUSED_CALL_TIMEOUT_SECONDS)
        assert code == grpc.StatusCode.UNAVAILABLE


def expired_server(pki: Path) -> Issued:
    return issue(dev_ca(pki), "server", server=True, expired=True)


def mismatched_key(pki: Path) -> Issued:
    good, other = issue(dev_ca(pki), "server", server=True), issue(dev_ca(pki), "server")
    return Issued(good.cert_pem, other.key_pem)


def garbage(pki: Path) -> Issued:
    return Issued(b"-----BEGIN CERTIFICATE-----\nnot base64\n", b"not a key")


@pytest.mark.parametrize("broken", [expired_server, mismatched_key, garbage])
async def test_unusable_tls_files_are_refused_and_the_old_certificate_stays(
    mtls_server: RunningServer,
    pki: Path,
    files: Files,
    caplog: pytest.LogCaptureFixture,
    broken: object,
) -> None:
    assert callable(broken)
    files.serve(broken(pki))
    refused_before = reloads("tls", "refused")
    assert not reload.reload_certificates(mtls_server.built)
    assert reloads("tls", "refused") == refused_before + 1
    entry = the_refusal(caplog, "tls")
    assert "CREDITS_TLS_" in str(entry["error"])
    assert "PRIVATE KEY" not in json.dumps(entry)
    async with channel_as(mtls_server.address, dev_ca(pki), issue(dev_ca(pki), "ops")) as channel:
        assert await balance_code(Stub(channel)) == OK


async def test_an_empty_client_ca_file_is_refused(
    mtls_server: RunningServer, pki: Path, files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    files.ca.write_bytes(b"")
    assert not reload.reload_certificates(mtls_server.built)
    assert "CREDITS_TLS_CA_FILE" in str(the_refusal(caplog, "tls")["error"])
    async with channel_as(mtls_server.address, dev_ca(pki), issue(dev_ca(pki), "ops")) as channel:
        assert await balance_code(Stub(channel)) == OK


async def test_a_caller_added_or_removed_in_the_callers_file_counts_after_a_reload(
    mtls_server: RunningServer, pki: Path, files: Files
) -> None:
    billing = issue(dev_ca(pki), "billing")
    backend = issue(dev_ca(pki), "backend")
    async with (
        tls_channel(pki, mtls_server.address, billing) as as_billing,
        tls_channel(pki, mtls_server.address, backend) as as_backend,
    ):
        assert await balance_code(Stub(as_billing)) == UNAUTHENTICATED
        write_callers(
            files.callers,
            caller_table("billing", ["GetBalance"]),
            caller_table("gateway", ["Grant", "Revoke", "GetBalance"]),
        )
        assert reload.reload_callers(mtls_server.settings, mtls_server.built)
        # The same connections: callers are judged per call, not per connection.
        assert await balance_code(Stub(as_billing)) == OK
        assert await balance_code(Stub(as_backend)) == UNAUTHENTICATED


@pytest.fixture
async def tls_server(database_url: str, pki: Path, files: Files) -> AsyncIterator[RunningServer]:
    write_callers(files.callers, caller_table("backend", BACKEND_RPCS, api_keys=(OLD_KEY,)))
    server = await start_with(database_url, pki, files, auth_mode="tls")
    try:
        yield server
    finally:
        await server.stop()


async def test_an_api_key_is_rotated_without_a_restart(
    tls_server: RunningServer, pki: Path, files: Files
) -> None:
    async with tls_channel(pki, tls_server.address) as channel:
        stub = Stub(channel)
        assert await balance_code(stub, with_key(NEW_KEY)) == UNAUTHENTICATED
        write_callers(
            files.callers, caller_table("backend", BACKEND_RPCS, api_keys=(OLD_KEY, NEW_KEY))
        )
        assert reload.reload_callers(tls_server.settings, tls_server.built)
        assert await balance_code(stub, with_key(OLD_KEY)) == OK
        assert await balance_code(stub, with_key(NEW_KEY)) == OK
        write_callers(files.callers, caller_table("backend", BACKEND_RPCS, api_keys=(NEW_KEY,)))
        assert reload.reload_callers(tls_server.settings, tls_server.built)
        assert await balance_code(stub, with_key(OLD_KEY)) == UNAUTHENTICATED
        assert await balance_code(stub, with_key(NEW_KEY)) == OK


@pytest.mark.parametrize(
    "content",
    [
        "[callers.backend\nrpcs = [",  # not TOML
        caller_table("backend", BACKEND_RPCS, api_keys=(NEW_KEY,))
        + caller_table("billing", ["GetBalance"]),  # a caller with no key, in tls mode
        caller_table("backend", ["NoSuchRpc"], api_keys=(NEW_KEY,)),  # an unknown RPC
        "",  # no callers at all
    ],
    ids=["not-toml", "caller-without-key", "unknown-rpc", "empty"],
)
async def test_a_broken_callers_file_keeps_the_old_callers(
    tls_server: RunningServer,
    pki: Path,
    files: Files,
    caplog: pytest.LogCaptureFixture,
    content: str,
) -> None:
    files.callers.write_text(content, encoding="utf-8")
    refused_before = reloads("callers", "refused")
    assert not reload.reload_callers(tls_server.settings, tls_server.built)
    assert reloads("callers", "refused") == refused_before + 1
    entry = the_refusal(caplog, "CREDITS_CALLERS_FILE")
    assert NEW_KEY not in json.dumps(entry)
    async with tls_channel(pki, tls_server.address) as channel:
        assert await balance_code(Stub(channel), with_key(OLD_KEY)) == OK
        assert await balance_code(Stub(channel), with_key(NEW_KEY)) == UNAUTHENTICATED


def test_sighup_reloads_the_running_service(database_url: str, pki: Path, files: Files) -> None:
    """The signal reaches the reload in `python -m service`: a broken file is refused
    and logged, then a good one is taken, and the process serves on throughout."""
    env = production_env(database_url, pki, free_port(), **files.env())
    with ServiceProcess(env) as service:
        files.callers.write_text("not toml [", encoding="utf-8")
        service.signal(signal.SIGHUP)
        refused = service.wait_for_log(lambda e: e.get("msg") == "reload refused")
        assert refused["level"] == "error"
        assert refused["file"] == "CREDITS_CALLERS_FILE"
        shutil.copyfile(pki / "callers.toml", files.callers)
        service.signal(signal.SIGHUP)
        service.wait_for_log(
            lambda e: e.get("msg") == "reloaded" and e.get("file") == "CREDITS_CALLERS_FILE"
        )
        service.wait_for_log(lambda e: e.get("msg") == "reloaded" and e.get("file") == "tls")
        assert service.stop() == 0
        service.entries()  # every line of the run was JSON


async def test_the_expiry_of_the_certificate_in_force_is_a_metric(
    mtls_server: RunningServer, pki: Path, files: Files
) -> None:
    renewed = issue(dev_ca(pki), "server", server=True, days=90)
    files.serve(renewed)
    assert reload.reload_certificates(mtls_server.built)
    expires = x509.load_pem_x509_certificate(renewed.cert_pem).not_valid_after_utc
    metric = REGISTRY.get_sample_value("credits_tls_certificate_expires_timestamp_seconds")
    assert metric == expires.timestamp()
