"""The client is a distribution of its own: its wheel, installed into an empty virtual
environment with nothing but what the wheel asks for from the package index, imports
without the service's dependencies and calls the real service."""

import asyncio
import json
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from zipfile import ZipFile

import pytest
from packaging.requirements import Requirement

from tests.client.conftest import mtls_options
from tests.support import RunningServer, new_id

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "client"
# Exactly what client/pyproject.toml promises: nothing of the service.
CLIENT_REQUIREMENTS = {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos"}
# Top-level modules of the service's dependencies that a backend must not get with the client.
SERVICE_ONLY_MODULES = ("sqlalchemy", "asyncpg", "pgserver", "stripe", "uvicorn", "starlette")
INSTALL_TIMEOUT_SECONDS = 120
CALL_TIMEOUT_SECONDS = 60

IMPORT_PROBE = f"""
import importlib.util, json, sys
import credits_client
from credits.v1 import credits_pb2, credits_pb2_grpc
print(json.dumps({{
    "client_file": credits_client.__file__,
    "stub": credits_pb2_grpc.CreditsServiceStub.__name__,
    "request": credits_pb2.GetBalanceRequest.DESCRIPTOR.full_name,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {SERVICE_ONLY_MODULES!r}),
    "installed": [m for m in {SERVICE_ONLY_MODULES!r} if importlib.util.find_spec(m)],
}}))
"""

# Grants to a new account and reads its balance back, as the development caller `ops`.
CALL_PROBE = """
import asyncio, json, sys
from credits_client import CreditsClient

async def main(address, account, ca, cert, key):
    async with CreditsClient(address, ca_file=ca, cert_file=cert, key_file=key) as client:
        await client.grant(account, 500, source="purchase")
        balance = await client.balance(account)
    print(json.dumps({"account_id": balance.account_id, "available": balance.available}))

asyncio.run(main(*sys.argv[1:]))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path  # of the new environment


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The client's wheel, built from a copy of client/ (the build writes beside its
    sources), installed with its dependencies into a new environment that has no pip."""
    base = tmp_path_factory.mktemp("client-distribution")
    source = base / "client"
    shutil.copytree(
        CLIENT_DIR,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".mypy_cache"),
    )
    wheels = base / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(wheels)],
        check=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    (wheel,) = wheels.glob("credits_client-*.whl")
    environment = base / "venv"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--only-binary", ":all:", str(wheel)],
        check=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    return Installed(wheel, python)


def requirement_names(wheel: Path) -> set[str]:
    with ZipFile(wheel) as archive:
        (metadata_name,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    return {Requirement(line).name for line in metadata.get_all("Requires-Dist") or []}


def test_the_wheel_requires_only_grpc_and_protobuf(installed: Installed) -> None:
    assert requirement_names(installed.wheel) == CLIENT_REQUIREMENTS


def test_the_installed_client_imports_without_the_services_dependencies(
    installed: Installed, tmp_path: Path
) -> None:
    # Isolated mode, from a folder outside the repository: only the new environment counts.
    answer = subprocess.run(
        [str(installed.python), "-I", "-c", IMPORT_PROBE],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT_SECONDS,
    )
    found = json.loads(answer.stdout)

    assert Path(found["client_file"]).is_relative_to(installed.python.parents[1])
    assert found["stub"] == "CreditsServiceStub"
    assert found["request"] == "credits.v1.GetBalanceRequest"
    assert found["loaded"] == []
    assert found["installed"] == []


async def test_the_installed_client_calls_the_real_service(
    installed: Installed, credits_server: RunningServer, pki: Path, tmp_path: Path
) -> None:
    account = new_id()
    files = mtls_options(pki, "ops")
    # A child process the event loop waits for: the server answering it runs on this loop.
    child = await asyncio.create_subprocess_exec(
        str(installed.python),
        "-I",
        "-c",
        CALL_PROBE,
        credits_server.address,
        account,
        str(files["ca_file"]),
        str(files["cert_file"]),
        str(files["key_file"]),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), CALL_TIMEOUT_SECONDS)

    assert child.returncode == 0, err.decode()
    assert json.loads(out) == {"account_id": account, "available": 500}
