"""What deploy/ ships is valid where it runs: the systemd units pass `systemd-analyze
verify` without a warning and stay hardened, the Kubernetes manifests pass the bundled
Kubernetes schemas strictly, and both start the project's real entry points with settings
and files the code actually reads."""

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes release still supported upstream when these were written.
KUBERNETES_VERSION = "1.33"
# systemd-analyze security's overall exposure, 0 (locked down) to 10, times ten.
UNIT_EXPOSURE_MAX_TENTHS = 20
UNIT_PYTHON = "/opt/credits/venv/bin/python"
ANALYZE_TIMEOUT_SECONDS = 60
SETTING = re.compile(r"\bCREDITS_[A-Z0-9_]+\b")


def python_modules(command: list[str]) -> list[str]:
    """The modules a command runs with `python -m`."""
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word == "-m"]


def settings_the_code_reads() -> set[str]:
    return {
        name
        for folder in ("service", "gateway")
        for source in (REPO / folder).rglob("*.py")
        for name in SETTING.findall(source.read_text(encoding="utf-8"))
    }


# systemd


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed on this machine (package systemd)")
    return found


@pytest.fixture
def runnable_units(tmp_path: Path) -> list[Path]:
    """Copies of the units whose interpreter is this one: verify checks that ExecStart's
    program exists, and /opt/credits/venv exists only on a host that was deployed to."""
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text(encoding="utf-8").replace(UNIT_PYTHON, sys.executable))
        copies.append(copy)
    return copies


def test_the_units_verify_without_a_warning(runnable_units: list[Path]) -> None:
    # verify exits 0 on a directive it ignores (a typo, a bad value): only its output tells.
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *map(str, runnable_units)],
        check=False,
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT_SECONDS,
        cwd=runnable_units[0].parent,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_the_units_are_hardened(unit: Path) -> None:
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            "--no-pager",
            f"--threshold={UNIT_EXPOSURE_MAX_TENTHS}",
            str(unit),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stdout[-2000:]


def unit_lines(unit: Path, key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in unit.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"{key}=")
    ]


def test_the_units_run_the_projects_entry_points_and_reload_with_sighup() -> None:
    service = REPO / "deploy" / "systemd" / "credits.service"
    gateway = REPO / "deploy" / "systemd" / "credits-gateway.service"
    assert unit_lines(service, "ExecStart") == [f"{UNIT_PYTHON} -m service"]
    assert unit_lines(gateway, "ExecStart") == [f"{UNIT_PYTHON} -m gateway"]
    assert unit_lines(service, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    (readiness,) = unit_lines(service, "ExecStartPost")
    assert f"{UNIT_PYTHON} -m service.probe 127.0.0.1:50051" in readiness
    for module in ("service", "gateway", "service.probe"):
        assert importlib.util.find_spec(module) is not None, module


# Kubernetes


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for manifest in MANIFESTS:
        for document in yaml.safe_load_all(manifest.read_text(encoding="utf-8")):
            yield manifest.name, document


def resource_id(named: tuple[str, dict[str, Any]]) -> str:
    return f"{named[0]}:{named[1]['kind']}/{named[1]['metadata']['name']}"


@pytest.mark.parametrize("named", list(documents()), ids=resource_id)
def test_the_manifests_pass_the_kubernetes_schemas(named: tuple[str, dict[str, Any]]) -> None:
    kubernetes_validate.validate(named[1], KUBERNETES_VERSION, strict=True)


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        name: resource["spec"]["template"]["spec"]
        for kind in ("Deployment", "Job")
        for name, resource in by_kind(kind).items()
    }


def test_the_manifests_run_the_projects_entry_points_with_the_probe() -> None:
    pods = pod_specs()
    commands = {name: pod["containers"][0]["command"] for name, pod in pods.items()}
    assert commands == {
        "credits": ["python", "-m", "service"],
        "credits-gateway": ["python", "-m", "gateway"],
        "credits-migrate": ["python", "-m", "service.admin", "migrate"],
    }
    service = pods["credits"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe"):
        assert python_modules(service[probe]["exec"]["command"]) == ["service.probe"]
    gateway = pods["credits-gateway"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/healthz"
    for module in ("service", "gateway", "service.probe", "service.admin"):
        assert importlib.util.find_spec(module) is not None, module


def test_only_the_migration_job_has_the_owners_database_url() -> None:
    owners = {
        name
        for name, pod in pod_specs().items()
        for variable in pod["containers"][0].get("env", [])
        if variable["name"] == "CREDITS_MIGRATION_DATABASE_URL"
    }
    assert owners == {"credits-migrate"}


def test_every_setting_in_the_manifests_is_read_by_the_code() -> None:
    named = {key for config in by_kind("ConfigMap").values() for key in config.get("data", {})}
    named |= {
        variable["name"]
        for pod in pod_specs().values()
        for variable in pod["containers"][0].get("env", [])
    }
    assert named, "no setting found"
    assert named - settings_the_code_reads() == set()


def test_every_mounted_key_and_file_setting_is_declared_and_mounted() -> None:
    """Each Secret and ConfigMap key a pod mounts is among the keys secrets.yaml declares,
    and each file a setting names lies in a folder its pod mounts."""
    declared = {
        name: set(resource["metadata"]["annotations"]["credits/keys"].split())
        for kind in ("Secret", "ConfigMap")
        for name, resource in by_kind(kind).items()
        if "credits/keys" in resource["metadata"].get("annotations", {})
    }
    settings = {name: config.get("data", {}) for name, config in by_kind("ConfigMap").items()}
    for pod_name, pod in pod_specs().items():
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        container = pod["containers"][0]
        mounted_files: set[str] = set()
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            source = volume.get("secret") or volume.get("configMap")
            if source is None:
                continue
            source_name = source.get("secretName") or source.get("name")
            keys = {item["key"] for item in source["items"]}
            assert keys <= declared[source_name], (pod_name, source_name)
            mounted_files |= {f"{mount['mountPath']}/{item['path']}" for item in source["items"]}
        for reference in container.get("envFrom", []):
            for name, value in settings[reference["configMapRef"]["name"]].items():
                if name.endswith("_FILE"):
                    assert value in mounted_files, (pod_name, name)
