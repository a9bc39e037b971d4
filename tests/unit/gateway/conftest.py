"""Shared by the gateway's unit tests: Stripe's fixture events as stored, and the
development package table."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.packages import DEVELOPMENT_TABLE_TOML, PackageTable, parse_table

# Signed as stored: tests/fixtures/stripe/README.md says where they come from.
STRIPE_FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "stripe"


@pytest.fixture
def fixture_bytes() -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        return (STRIPE_FIXTURES / f"{name}.json").read_bytes()

    return read


@pytest.fixture
def fixture_event(fixture_bytes: Callable[[str], bytes]) -> Callable[[str], dict[str, Any]]:
    def load(name: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(fixture_bytes(name))
        return document

    return load


@pytest.fixture
def packages() -> PackageTable:
    return parse_table(DEVELOPMENT_TABLE_TOML)
