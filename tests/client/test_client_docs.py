"""The client's documentation works as printed: the example that ships
(`python -m credits_client.example`) runs against a real server, in a process of its
own, and prints what docs/client.md says; the docs show its source as it ships, the
README's excerpt is its code, the docs' synchronous example runs, and the docs name
every public name, every parameter and every error class with its reason and code."""

import asyncio
import inspect
import re
import sys
from pathlib import Path

import credits_client
from credits_client import CreditsClient, errors
from service.access.errors import INTERNAL_REASON, STATUS_OF
from tests.support import RunningServer, new_id

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "client.md"
README = REPO / "README.md"
EXAMPLE = REPO / "client" / "credits_client" / "example.py"
README_SECTION = "## Calling the service from Python"
EXAMPLE_SECONDS_MAX = 60.0
# Rows of the docs' error table: | `Class` | REASON | CODE | when |
ERROR_ROW = re.compile(r"^\| `(\w+)` \| ([A-Z_]+) \| ([A-Z_]+) \|", re.MULTILINE)


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def docs() -> str:
    return DOCS.read_text(encoding="utf-8")


async def run(*args: str) -> list[str]:
    """The output lines of `python *args`, run from the repository's root."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), EXAMPLE_SECONDS_MAX)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines()


def printed_first_run() -> list[str]:
    """The output the docs promise for the example's first run ("…" for an id)."""
    section = docs().split("The first run prints", 1)[1]
    return blocks(section, "text")[0].splitlines()


def matches(promised: list[str], actual: list[str]) -> bool:
    patterns = [re.escape(line).replace("…", r"\S+") for line in promised]
    return len(patterns) == len(actual) and all(
        re.fullmatch(pattern, line) for pattern, line in zip(patterns, actual, strict=True)
    )


async def test_the_shipped_example_prints_what_the_docs_say_and_a_rerun_does_nothing_twice(
    credits_server: RunningServer, pki: Path
) -> None:
    account = new_id()
    example = [
        *("-m", "credits_client.example", "--target", credits_server.address),
        *("--pki", str(pki), "--account", account),
    ]

    first = await run(*example)
    again = await run(*example)

    assert matches(printed_first_run(), first), first
    assert again[:2] == ["job-7 attempt 1 already released", "job-7 attempt 2 already confirmed"]
    assert again[2:-1] == first[2:-1], "nothing reserved or spent a second time"

    # The docs' synchronous example, on the account the example funded.
    (synchronous,) = blocks(docs().split("## Synchronous code", 1)[1], "python")
    for documented, actual in (
        ('"127.0.0.1:50051"', f'"{credits_server.address}"'),
        ('PKI = ".dev/pki"', f'PKI = "{pki}"'),
        ('"acct_py"', f'"{account}"'),
    ):
        assert documented in synchronous
        synchronous = synchronous.replace(documented, actual)
    promised = re.search(r"this prints `(.*?)`", docs().split("## Synchronous code", 1)[1])
    assert promised is not None
    assert await run("-c", synchronous) == [promised.group(1)]


def test_the_docs_show_the_example_as_it_ships() -> None:
    assert blocks(docs(), "python")[0] == EXAMPLE.read_text(encoding="utf-8")


def test_the_readme_points_at_the_docs_and_its_excerpt_is_the_examples_own_code() -> None:
    section = README.read_text(encoding="utf-8").split(README_SECTION, 1)[1].split("\n## ")[0]
    assert "(docs/client.md)" in section
    assert "python -m credits_client.example" in section

    def lines(code: str) -> str:
        return "\n".join(line.strip() for line in code.strip().splitlines())

    (excerpt,) = blocks(section, "python")
    assert lines(excerpt) in lines(EXAMPLE.read_text(encoding="utf-8"))


def test_the_docs_name_every_public_name_and_every_parameter() -> None:
    text = docs()
    for name in credits_client.__all__:
        assert re.search(rf"\b{name}\b", text), name
    for name, method in inspect.getmembers(CreditsClient, inspect.isfunction):
        if name.startswith("_") or name == "close":
            continue
        row = re.search(rf"^\| `{name}\((.*?)\)` \|", text, re.MULTILINE)
        assert row is not None, f"{name} has no row in the methods table"
        documented = row.group(1)
        for parameter in inspect.signature(method).parameters:
            if parameter not in ("self", "timeout_seconds"):  # timeout_seconds: every call
                assert re.search(rf"\b{parameter}\b", documented), f"{name}({parameter})"
    hold_block = blocks(text.split("## `hold()`", 1)[1], "python")[0]
    for parameter in inspect.signature(CreditsClient.hold).parameters:
        if parameter != "self":
            assert re.search(rf"\b{parameter}\b", hold_block), f"hold({parameter})"
    for parameter in list(inspect.signature(CreditsClient.__init__).parameters)[1:]:
        assert re.search(rf"\b{parameter}\b", text.split("## Connecting", 1)[1]), parameter


def test_the_docs_error_table_has_every_class_with_its_reason_and_code() -> None:
    codes = {mapped.reason: mapped.code.name for mapped in STATUS_OF.values()}
    codes[INTERNAL_REASON] = "INTERNAL"
    table = {name: (reason, code) for name, reason, code in ERROR_ROW.findall(docs())}
    assert table == {
        error_class.__name__: (reason, codes[reason])
        for reason, error_class in errors.BY_REASON.items()
    }
