"""A development public-key infrastructure: one CA, a server certificate and one client
certificate per development caller, written as `<dir>/<name>.pem` and `<dir>/<name>.key`.

Tests use the same functions to make the odd certificates they need (another CA, an
expired certificate, an unknown caller).
"""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEV_CALLERS = ("backend", "gateway", "ops")
SERVER_NAME = "server"
SERVER_HOSTNAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")
CERT_VALIDITY_DAYS = 365
# Backdated so a freshly made certificate is valid on a machine whose clock lags a little.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.pem").write_bytes(self.cert_pem)
        key_path = directory / f"{name}.key"
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(days: int, expired: bool) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        return now - datetime.timedelta(days=days + 1), now - datetime.timedelta(days=1)
    return now - CLOCK_SKEW_ALLOWANCE, now + datetime.timedelta(days=days)


def make_ca(common_name: str = "credits development CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(CERT_VALIDITY_DAYS, expired=False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Issued,
    name: str,
    *,
    server: bool = False,
    expired: bool = False,
    days: int = CERT_VALIDITY_DAYS,
) -> Issued:
    """Issue a certificate whose common name and DNS subject alternative name are `name`
    (a caller's identity), or, with `server`, one for the loopback host names."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days, expired)
    alt_names: list[x509.GeneralName]
    if server:
        alt_names = [x509.DNSName(h) for h in SERVER_HOSTNAMES]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        alt_names = [x509.DNSName(name)]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def ensure_dev_pki(directory: Path, callers: tuple[str, ...] = DEV_CALLERS) -> None:
    """Create the development PKI once; an existing one is kept so clients stay valid."""
    if (directory / "ca.pem").exists():
        return
    ca = make_ca()
    issue(ca, SERVER_NAME, server=True).write(directory, SERVER_NAME)
    for caller in callers:
        issue(ca, caller).write(directory, caller)
    ca.write(directory, "ca")
