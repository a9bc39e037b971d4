"""A development public-key infrastructure: one CA, a server certificate and one client
certificate per development caller, written as `<dir>/<name>.pem` and `<dir>/<name>.key`.

`python -m scripts.devpki issue NAME [--rpcs Reserve,GetBalance]` adds a caller to the
`make run` environment: a client certificate from the development CA, and with `--rpcs`
its table in the callers file with a fresh API key (for the tls and insecure modes).
Without `--rpcs` it only renews the certificate of an existing caller.

Tests use the same functions to make the odd certificates they need (another CA, an
expired certificate, an unknown caller).
"""

import argparse
import datetime
import ipaddress
import json
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scripts.devcallers import API_KEY_BYTES, DEV_RATE_PER_RPC, DEV_RPCS, api_key_path
from service.access.callers import CALLER_NAME_PATTERN, CallersError, api_key_digest, load_callers
from service.settings import DEV_CALLERS_FILE_NAME, DEV_DIR

DEV_CALLERS = tuple(DEV_RPCS)
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


# Names of the PKI's own files, which a client certificate must not overwrite.
RESERVED_NAMES = frozenset({"ca", SERVER_NAME})


class IssueError(Exception):
    """The caller cannot be added as asked; the message says why."""


def _caller_table(name: str, rpcs: list[str], api_key: str) -> str:
    # JSON strings and arrays of strings are valid TOML.
    return (
        f"\n[callers.{name}]\n"
        f"certificate_names = {json.dumps([name])}\n"
        f"api_key_sha256 = {json.dumps([api_key_digest(api_key).hex()])}\n"
        f"rpcs = {json.dumps(rpcs)}\n\n"
        f"[callers.{name}.rate_limits]\n"
        f'"*" = {json.dumps(DEV_RATE_PER_RPC)}\n'
    )


def add_caller(callers_file: Path, name: str, rpcs: list[str]) -> Path:
    """Append `name` with `rpcs` to the callers file; the path of its new API key.
    The file is checked whole before it replaces the old one."""
    current = callers_file.read_text(encoding="utf-8")
    if name in load_callers(callers_file).by_name:
        raise IssueError(f"{name} is already a caller in {callers_file}")
    api_key = secrets.token_urlsafe(API_KEY_BYTES)
    partial = callers_file.with_name(callers_file.name + ".partial")
    partial.write_text(current + _caller_table(name, rpcs, api_key), encoding="utf-8")
    try:
        load_callers(partial)
    except CallersError as exc:
        partial.unlink()
        raise IssueError(f"the caller would make the callers file invalid: {exc}") from None
    key_path = api_key_path(callers_file, name)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(api_key + "\n")
    partial.replace(callers_file)
    return key_path


def issue_caller(dev_dir: Path, name: str, rpcs: list[str] | None) -> list[str]:
    """Issue `name` a client certificate of the development CA (and, with `rpcs`, add it
    to the callers file); what was written, as lines for the terminal."""
    if not CALLER_NAME_PATTERN.fullmatch(name) or name in RESERVED_NAMES:
        raise IssueError(f"{name!r} is reserved or not a caller name (1-64 of A-Z a-z 0-9 . _ -)")
    pki = dev_dir / "pki"
    callers_file = dev_dir / DEV_CALLERS_FILE_NAME
    if rpcs is not None and not callers_file.exists():
        raise IssueError(f"no callers file at {callers_file}: run `make run` once first")
    ensure_dev_pki(pki)
    ca = Issued((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes())
    written = []
    if rpcs is not None:
        key_path = add_caller(callers_file, name, rpcs)
        written += [f"callers file  {callers_file}", f"API key       {key_path}"]
    issue(ca, name).write(pki, name)
    return [f"certificate   {pki / name}.pem", f"private key   {pki / name}.key", *written]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.devpki")
    commands = parser.add_subparsers(dest="command", required=True)
    issuing = commands.add_parser("issue", help="issue a caller its development credentials")
    issuing.add_argument("name", help="the caller's name (its certificate's SAN and CN)")
    issuing.add_argument("--rpcs", help="add it to the callers file with these RPCs (a,b or *)")
    issuing.add_argument("--dev-dir", type=Path, default=DEV_DIR)
    args = parser.parse_args(argv)
    try:
        rpcs = None if args.rpcs is None else [r.strip() for r in args.rpcs.split(",")]
        lines = issue_caller(args.dev_dir, args.name, rpcs)
    except (IssueError, CallersError) as exc:
        print(f"devpki: {exc}", file=sys.stderr)
        return 1
    print(f"issued {args.name}:")
    for line in lines:
        print(f"  {line}")
    if rpcs is not None:
        print("a running service takes the new callers file on SIGHUP (or at its next start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
