"""One list of RPCs, the contract's: every method of `credits.v1.CreditsService` has what a
method needs everywhere else — a servicer method, a client method (which
tests/client/test_client_sync.py gives its blocking twin), a permission for the `ops`
development caller, a fuzz entry and a documented place. A new RPC that forgets one fails
here, by name, before any other test has to notice."""

import ast
import inspect
import re
from pathlib import Path

import pytest

from chaos import fuzz
from credits.v1.credits_pb2_grpc import CreditsServiceServicer
from credits_client.client import CreditsClient
from scripts.devcallers import DEV_RPCS
from service.access import contract
from service.access.callers import ANY_RPC
from service.rpc.servicer import CreditsServicer

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _rpcs_the_client_calls() -> set[str]:
    """The RPC names the client passes to its calling helpers (`_call`/`_pages`/`_stream`)."""
    tree = ast.parse(inspect.getsource(CreditsClient))
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"_call", "_pages", "_stream"}
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def test_the_contract_lists_the_rpcs_the_descriptor_has() -> None:
    assert contract.RPC_NAMES
    assert contract.request_type("Reserve").DESCRIPTOR.name == "ReserveRequest"
    assert contract.full_method("Reserve") == "/credits.v1.CreditsService/Reserve"


@pytest.mark.parametrize("rpc", contract.RPC_NAMES)
def test_every_rpc_has_a_servicer_method(rpc: str) -> None:
    assert getattr(CreditsServicer, rpc) is not getattr(CreditsServiceServicer, rpc)


@pytest.mark.parametrize("rpc", contract.RPC_NAMES)
def test_every_rpc_has_a_client_method(rpc: str) -> None:
    assert rpc in _rpcs_the_client_calls()


@pytest.mark.parametrize("rpc", contract.RPC_NAMES)
def test_the_ops_caller_may_call_every_rpc(rpc: str) -> None:
    assert DEV_RPCS["ops"] == (ANY_RPC,) or rpc in DEV_RPCS["ops"]


def test_every_dev_permission_names_an_rpc_of_the_contract() -> None:
    named = {rpc for rpcs in DEV_RPCS.values() for rpc in rpcs} - {ANY_RPC}
    assert named - set(contract.RPC_NAMES) == set()


@pytest.mark.parametrize("rpc", contract.RPC_NAMES)
def test_every_rpc_is_fuzzed(rpc: str) -> None:
    assert fuzz.REQUEST_TYPES[rpc] is contract.request_type(rpc)


@pytest.mark.parametrize("rpc", contract.RPC_NAMES)
def test_every_rpc_is_documented(rpc: str) -> None:
    pattern = re.compile(rf"\b{rpc}\b")
    assert any(pattern.search(doc.read_text()) for doc in DOCS)
