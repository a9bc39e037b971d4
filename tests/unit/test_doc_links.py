"""Every relative link of the README and of docs/ leads somewhere: to a file of the
repository and, when it names a section (`page.md#section`), to a heading of that page."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
# [text](target): the target up to its closing parenthesis; images the same.
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {anchor(heading) for heading in HEADING.findall(text)}


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [target for target in LINK.findall(text) if "://" not in target]


def broken(page: Path, target: str) -> str | None:
    """Why `target`, linked from `page`, leads nowhere; None when it leads somewhere."""
    path, _, section = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    if not linked.exists():
        return "no such file"
    if section and linked.suffix == ".md" and section not in anchors(linked):
        return f"no heading #{section}"
    return None


def test_the_scan_finds_the_links_of_the_readme() -> None:
    assert "docs/operations.md" in {t.partition("#")[0] for t in relative_links(PAGES[0])}


def test_every_relative_link_leads_somewhere() -> None:
    failures = [
        f"{page.relative_to(REPO)}: {target}: {reason}"
        for page in PAGES
        for target in relative_links(page)
        if (reason := broken(page, target)) is not None
    ]
    assert failures == [], f"links that lead nowhere: {failures}"
