"""Helpers of the access tests (authentication, authorization, rate limits): channels
with odd credentials, callers files, and the rich details of a refusal."""

from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from scripts.devpki import Issued
from service.access.callers import api_key_digest

API_KEY_HEADER = "x-api-key"
M = TypeVar("M", bound=message.Message)


def dev_ca(pki: Path) -> Issued:
    """The CA of the session's PKI, to issue odd certificates (expired, unknown caller)."""
    return Issued((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes())


def tls_channel(pki: Path, address: str, client: Issued | None = None) -> grpc.aio.Channel:
    """A TLS channel that trusts the session's CA and presents `client`, if any."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.aio.secure_channel(address, credentials)


def with_key(api_key: str) -> tuple[tuple[str, str], ...]:
    return ((API_KEY_HEADER, api_key),)


def caller_table(
    name: str,
    rpcs: list[str],
    rate: str = "1000/second",
    *,
    api_keys: tuple[str, ...] = (),
    certificate_names: tuple[str, ...] | None = None,
    extra_limits: str = "",
) -> str:
    """One caller of a callers file, in the documented format."""
    digests = ", ".join(f'"{api_key_digest(k).hex()}"' for k in api_keys)
    names = ", ".join(f'"{n}"' for n in (certificate_names or (name,)))
    quoted = ", ".join(f'"{r}"' for r in rpcs)
    return (
        f"[callers.{name}]\ncertificate_names = [{names}]\napi_key_sha256 = [{digests}]\n"
        f'rpcs = [{quoted}]\n[callers.{name}.rate_limits]\n"*" = "{rate}"\n{extra_limits}\n'
    )


def write_callers(path: Path, *tables: str) -> Path:
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def rich_status(err: grpc.aio.AioRpcError) -> list[message.Message]:
    """The unpacked details of a failed call's google.rpc.Status, in order."""
    status = rpc_status.from_call(err)
    assert status is not None, "every failure carries a google.rpc.Status"
    kinds: list[type[message.Message]] = [
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.BadRequest,
    ]
    unpacked: list[message.Message] = []
    for detail in status.details:
        for kind in kinds:
            if detail.Is(kind.DESCRIPTOR):
                item = kind()
                detail.Unpack(item)
                unpacked.append(item)
    return unpacked


def detail_of(err: grpc.aio.AioRpcError, kind: type[M]) -> M:
    found = [d for d in rich_status(err) if isinstance(d, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {rich_status(err)}"
    return found[0]
