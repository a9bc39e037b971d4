"""A clone of the repository with nothing beside it runs the whole suite: the test data
lives under tests/fixtures/, and no tracked file points outside the repository."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# A path to the repository's parent folder or to the shared reference material beside it.
# Patterns, not the paths themselves, so that this file does not name what it looks for.
READS_OUTSIDE = re.compile(r"\.\./shared|shared/stripe[-]fixtures|parents\[3\]\.parent")
# Citations of a specification that is not in the repository ("SPEC §6"): the repository
# explains itself, so code and documents cite its README or docs/, or nothing.
OUTSIDE_CITATION = re.compile(r"\bSPEC\b|§")
TEXT_SUFFIXES = (
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


def lines_matching(pattern: re.Pattern[str]) -> list[str]:
    """Every line of a tracked text file (this one excepted) that `pattern` finds."""
    names = subprocess.run(
        ["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    return [
        f"{name}:{number}: {line.strip()}"
        for name in names
        if name.endswith(TEXT_SUFFIXES) and REPO / name != Path(__file__)
        for number, line in enumerate((REPO / name).read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]


def test_no_tracked_file_reads_outside_the_repository() -> None:
    assert lines_matching(READS_OUTSIDE) == []


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    assert lines_matching(OUTSIDE_CITATION) == []


def test_stripe_fixtures_are_in_the_repository() -> None:
    fixtures = REPO / "tests" / "fixtures" / "stripe"
    for name in (
        "checkout.session.completed",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed.lost",
    ):
        assert (fixtures / f"{name}.json").is_file()
