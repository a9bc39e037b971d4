"""A clone of the repository with nothing beside it runs the whole suite: the test data
lives under tests/fixtures/, and no tracked file points outside the repository."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE_MARKERS = ("../shared", "shared/stripe-fixtures", "parents[3].parent")


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


def test_stripe_fixtures_are_in_the_repository() -> None:
    fixtures = REPO / "tests" / "fixtures" / "stripe"
    for name in (
        "checkout.session.completed",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed.lost",
    ):
        assert (fixtures / f"{name}.json").is_file()
