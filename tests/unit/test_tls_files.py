"""The checks a set of TLS files passes before the server uses it (at start and on every
reload): what is refused says which setting is wrong, never what the files hold."""

import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from scripts.devpki import Issued, issue, make_ca
from service.access.tls import TLS_FILE_BYTES_MAX, TlsError, TlsFiles, load


def now() -> datetime.datetime:
    """Read at each use: certificates are issued at the moment they are, and a constant
    taken at import would be minutes old when a long run reaches these tests."""
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture
def ca() -> Issued:
    return make_ca("tls files test CA")


def files_of(directory: Path, server: Issued, ca: Issued | None) -> TlsFiles:
    server.write(directory, "server")
    ca_file = None
    if ca is not None:
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(ca.cert_pem)
    return TlsFiles(directory / "server.pem", directory / "server.key", ca_file)


def refusal(files: TlsFiles, at: datetime.datetime | None = None) -> str:
    with pytest.raises(TlsError) as caught:
        load(files, at or now())
    message = str(caught.value)
    assert "BEGIN" not in message
    return message


def test_a_certificate_with_its_chain_and_key_is_taken(tmp_path: Path, ca: Issued) -> None:
    server = issue(ca, "server", server=True)
    chained = Issued(server.cert_pem + ca.cert_pem, server.key_pem)
    loaded = load(files_of(tmp_path, chained, ca), now())
    assert loaded.cert_pem == chained.cert_pem
    assert loaded.ca_pem == ca.cert_pem


def test_tls_mode_needs_no_ca(tmp_path: Path, ca: Issued) -> None:
    assert load(files_of(tmp_path, issue(ca, "server", server=True), None), now()).ca_pem is None


def test_a_certificate_not_valid_yet_is_refused(tmp_path: Path, ca: Issued) -> None:
    files = files_of(tmp_path, issue(ca, "server", server=True), ca)
    a_day_ago = now() - datetime.timedelta(days=1)
    assert "CREDITS_TLS_CERT_FILE" in refusal(files, a_day_ago)


def test_an_encrypted_key_is_refused(tmp_path: Path, ca: Issued) -> None:
    server = issue(ca, "server", server=True)
    key = serialization.load_pem_private_key(server.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase"),
    )
    files = files_of(tmp_path, Issued(server.cert_pem, encrypted), ca)
    assert "CREDITS_TLS_KEY_FILE" in refusal(files)


def test_a_missing_file_is_refused(tmp_path: Path, ca: Issued) -> None:
    files = files_of(tmp_path, issue(ca, "server", server=True), ca)
    files.key_file.unlink()
    assert refusal(files) == "CREDITS_TLS_KEY_FILE: cannot be read"


def test_an_oversized_file_is_refused(tmp_path: Path, ca: Issued) -> None:
    files = files_of(tmp_path, issue(ca, "server", server=True), ca)
    assert files.ca_file is not None
    files.ca_file.write_bytes(ca.cert_pem + b"\n" * TLS_FILE_BYTES_MAX)
    assert "CREDITS_TLS_CA_FILE" in refusal(files)
