"""The layout is the architecture (docs/architecture.md): each room of service/ imports only
the rooms below it, and the ledger core imports nothing but the standard library and itself.
A module that reaches up or sideways fails here, by name, before it can tangle the layers."""

import ast
import sys
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"

# Room → the rooms of service/ it may import. The top level (composition root, settings,
# the processes one runs) may import every room.
ROOMS_BELOW = {
    "ledger": {"ledger"},
    "ops": {"ops"},
    "store": {"store", "ledger", "ops"},
    "access": {"access", "ledger", "ops"},
    "rpc": {"rpc", "access", "ledger", "ops", "settings"},
}
# Frameworks a room must not touch even though they are installed: storage stays out of the
# request-facing rooms and gRPC stays out of storage.
FRAMEWORKS_REFUSED = {
    "ops": {"grpc", "google", "credits", "sqlalchemy", "asyncpg"},
    "store": {"grpc", "google", "credits", "grpc_status"},
    "access": {"sqlalchemy", "asyncpg", "alembic", "pgserver"},
    "rpc": {"sqlalchemy", "asyncpg", "alembic", "pgserver"},
}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _modules_of(room: str) -> list[Path]:
    return sorted((SERVICE / room).rglob("*.py"))


def test_every_folder_of_service_is_a_known_room() -> None:
    folders = {p.name for p in SERVICE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(ROOMS_BELOW)


@pytest.mark.parametrize("room", sorted(ROOMS_BELOW))
def test_a_room_imports_only_the_rooms_below_it(room: str) -> None:
    upward = [
        f"{path.relative_to(SERVICE.parent)} imports {name}"
        for path in _modules_of(room)
        for name in _imports(path)
        if name.startswith("service.") and name.split(".")[1] not in ROOMS_BELOW[room]
    ]
    assert upward == []


def test_the_ledger_core_imports_only_the_standard_library() -> None:
    foreign = [
        f"{path.relative_to(SERVICE.parent)} imports {name}"
        for path in _modules_of("ledger")
        for name in _imports(path)
        if not name.startswith("service.ledger")
        and name.split(".")[0] not in sys.stdlib_module_names
    ]
    assert foreign == []


@pytest.mark.parametrize("room", sorted(FRAMEWORKS_REFUSED))
def test_a_room_leaves_the_other_rooms_frameworks_alone(room: str) -> None:
    foreign = [
        f"{path.relative_to(SERVICE.parent)} imports {name}"
        for path in _modules_of(room)
        for name in _imports(path)
        if name.split(".")[0] in FRAMEWORKS_REFUSED[room]
    ]
    assert foreign == []


def test_the_guard_sees_an_upward_import(tmp_path: Path) -> None:
    """The scan itself works: a module importing a room above it is found."""
    module = tmp_path / "bad.py"
    module.write_text("from service.rpc import server\nimport service.store.postgres\n")
    assert _imports(module) == ["service.rpc", "service.store.postgres"]
