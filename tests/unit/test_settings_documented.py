"""The settings table of docs/operations.md is the settings the code reads: every `CREDITS_…`
name that the service, the gateway or the tools take from the environment has its row, and
no row documents a setting nothing reads. The table exists once; other documents point to it.

A name counts as read when a source file holds it as a whole string (`env.get("CREDITS_X")`,
a `…_SETTING = "CREDITS_X"` constant, a development default keyed by it): that is how
service/settings.py, gateway/settings.py, service/admin.py and scripts/devrun.py read them.
Names built at run time would escape this scan, so the code never builds one."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What reads settings: the two processes and the tools that start them. chaos/ and bench/
# only set settings for the processes they start.
READERS = ("service", "gateway", "scripts")
SETTINGS_DOC = REPO / "docs" / "operations.md"
SETTINGS_HEADING = "\n## Settings\n"
SETTING_NAME = re.compile(r"CREDITS_[A-Z0-9_]+")
# A table row whose first cell names settings: "| `CREDITS_A`, `CREDITS_B` | …".
ROW_NAMES = re.compile(r"^\| ((?:`CREDITS_[A-Z0-9_]+`(?:, )?)+) \|", re.MULTILINE)


def names_in_source(path: Path) -> set[str]:
    """Every string constant of `path` that is exactly a setting's name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and SETTING_NAME.fullmatch(node.value)
    }


def read_by_the_code() -> set[str]:
    return {
        name
        for folder in READERS
        for path in sorted((REPO / folder).rglob("*.py"))
        for name in names_in_source(path)
    }


def settings_section(text: str) -> str:
    assert SETTINGS_HEADING in text, f"{SETTINGS_DOC.name} has no '## Settings' section"
    return text.split(SETTINGS_HEADING, 1)[1].split("\n## ", 1)[0]


def documented() -> set[str]:
    section = settings_section(SETTINGS_DOC.read_text(encoding="utf-8"))
    return {name for cell in ROW_NAMES.findall(section) for name in SETTING_NAME.findall(cell)}


def test_the_scan_finds_the_settings_of_both_processes() -> None:
    """The scan itself works: its folders exist (a renamed one would silently drop out) and
    names each reader is known to read are found."""
    gone = [folder for folder in READERS if not (REPO / folder).is_dir()]
    assert gone == [], f"READERS names folders that no longer exist: {gone}"
    assert {"CREDITS_GRPC_ADDR", "CREDITS_GATEWAY_ADDR", "CREDITS_DEV_DIR"} <= read_by_the_code()


def test_every_setting_read_by_the_code_is_documented() -> None:
    missing = sorted(read_by_the_code() - documented())
    assert missing == [], f"read by the code but not in {SETTINGS_DOC.name}'s table: {missing}"


def test_every_documented_setting_is_read_by_the_code() -> None:
    extra = sorted(documented() - read_by_the_code())
    assert extra == [], f"in {SETTINGS_DOC.name}'s table but read by no code: {extra}"


def test_no_other_document_has_a_settings_table() -> None:
    """One table: the other pages of docs/ point to it instead of repeating rows."""
    repeated = [
        f"{page.name}: {names}"
        for page in sorted((REPO / "docs").glob("*.md"))
        if page != SETTINGS_DOC
        for names in ROW_NAMES.findall(page.read_text(encoding="utf-8"))
    ]
    assert repeated == [], f"settings rows outside {SETTINGS_DOC.name}: {repeated}"
