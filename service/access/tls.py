"""The server's TLS certificate, key and (mtls) client CA, replaceable while serving.

gRPC asks `_fetch` for the configuration at the start of every TLS handshake; it answers
with a new one once after a successful reload and "no change" otherwise. Connections
already open keep the certificate they were made with until they close (at the latest
after the server's maximum connection age), so a reload drops nothing in flight.

Files are checked before they are used: a certificate chain and a key that belong
together, a certificate that is valid now, and (mtls) a CA file with at least one
certificate. Anything else is refused and the files in force stay in force.
"""

import datetime
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)

from service.ops import metrics

# A PEM chain or key larger than this is not a certificate file.
TLS_FILE_BYTES_MAX = 1024 * 1024


class TlsError(ValueError):
    """The TLS files cannot be used; the message names the setting, never key material."""


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    # None in tls mode: no client certificates are asked for.
    ca_file: Path | None


@dataclass(frozen=True)
class Material:
    """Checked PEM contents of the TLS files."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None
    not_valid_after: datetime.datetime


def _read(path: Path, setting: str) -> bytes:
    try:
        with path.open("rb") as file:
            raw = file.read(TLS_FILE_BYTES_MAX + 1)
    except OSError:
        raise TlsError(f"{setting}: cannot be read") from None
    if len(raw) > TLS_FILE_BYTES_MAX:
        raise TlsError(f"{setting}: is larger than {TLS_FILE_BYTES_MAX} bytes")
    return raw


def _certificates(pem: bytes, setting: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsError(f"{setting}: holds no PEM certificate") from None
    return certificates


def _public_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load(files: TlsFiles, now: datetime.datetime) -> Material:
    """Read and check the files, raising TlsError with what is wrong."""
    cert_pem = _read(files.cert_file, "CREDITS_TLS_CERT_FILE")
    key_pem = _read(files.key_file, "CREDITS_TLS_KEY_FILE")
    leaf = _certificates(cert_pem, "CREDITS_TLS_CERT_FILE")[0]
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        raise TlsError("CREDITS_TLS_CERT_FILE: the certificate is not valid now")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # The parser's message is about the key's content; say only what matters.
        raise TlsError("CREDITS_TLS_KEY_FILE: holds no unencrypted PEM private key") from None
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise TlsError("CREDITS_TLS_KEY_FILE: does not belong to CREDITS_TLS_CERT_FILE")
    ca_pem = None
    if files.ca_file is not None:
        ca_pem = _read(files.ca_file, "CREDITS_TLS_CA_FILE")
        _certificates(ca_pem, "CREDITS_TLS_CA_FILE")
    return Material(cert_pem, key_pem, ca_pem, leaf.not_valid_after_utc)


def _configuration(material: Material) -> grpc.ServerCertificateConfiguration:
    # Set when the files are taken: an alert on it catches a certificate nobody renewed.
    metrics.TLS_CERTIFICATE_EXPIRES.set(material.not_valid_after.timestamp())
    return grpc.ssl_server_certificate_configuration(
        [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
    )


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ServerCertificates:
    """The server credentials, and the reload that replaces what they serve."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._initial = _configuration(load(files, _utc_now()))
        # Set by a reload, taken by the next handshake. gRPC calls `_fetch` from its own
        # threads, hence the lock around the exchange.
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()

    def credentials(self) -> grpc.ServerCredentials:
        """mtls (a CA file): client certificates required and checked against it."""
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,
            require_client_authentication=self._files.ca_file is not None,
        )

    def reload(self) -> None:
        """Serve the files as they are now to every new connection; TlsError if they are
        not usable, and then nothing changes."""
        configuration = _configuration(load(self._files, _utc_now()))
        with self._lock:
            self._pending = configuration

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        metrics.TLS_HANDSHAKES.inc()
        with self._lock:
            pending, self._pending = self._pending, None
        return pending
