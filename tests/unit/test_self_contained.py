"""A clone of the repository with nothing beside it runs the whole suite: the test data
lives under tests/fixtures/, and no tracked file points outside the repository."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE_MARKERS = ("../shared", "shared/stripe-fixtures", "parents[3].parent")
# Citations of a specification that is not in the repository ("SPEC §6"): the repository
# explains itself, so code and documents cite its README or docs/, or nothing.
OUTSIDE_CITATION = re.compile(r"\bSPEC\b|§")
CITING_SUFFIXES = (
    ".py",
    ".pyi",
    ".md",
    ".sh",
    "Makefile",
    ".toml",
    ".ini",
    ".proto",
    ".sql",
    ".mako",
)


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    return [
        REPO / name
        for name in names
        if name.endswith((".py", ".md", ".sh", "Makefile", ".toml", ".ini"))
    ]


def test_no_tracked_file_reads_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {marker}"
        for path in tracked_text_files()
        if path != Path(__file__)
        for marker in OUTSIDE_MARKERS
        if marker in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    names = subprocess.run(
        ["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    offenders = [
        f"{name}:{number}: {line.strip()}"
        for name in names
        if name.endswith(CITING_SUFFIXES) and REPO / name != Path(__file__)
        for number, line in enumerate((REPO / name).read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE_CITATION.search(line)
    ]
    assert offenders == []


def test_stripe_fixtures_are_in_the_repository() -> None:
    fixtures = REPO / "tests" / "fixtures" / "stripe"
    for name in (
        "checkout.session.completed",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed.lost",
    ):
        assert (fixtures / f"{name}.json").is_file()
