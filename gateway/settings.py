"""The gateway's settings: read once from `CREDITS_…` environment variables, frozen.

`CREDITS_ENV=development` (what `make run` sets) fills in the development conventions of
docs/operations.md "Settings" (files under `.dev/`, loopback addresses). Anything else is
production, where a missing setting stops the start with a message naming it -- never its
value, and there is no default or fallback secret anywhere.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.packages import PackageTable, PackageTableError, load_table
from gateway.stripe_api import STRIPE_API_BASE_DEFAULT

DEVELOPMENT = "development"
# `make run`'s directory (CREDITS_DEV_DIR moves it, for the service and the gateway alike).
DEV_DIR = Path(".dev")
DEV_DIR_SETTING = "CREDITS_DEV_DIR"


def development_defaults(dev_dir: Path) -> Mapping[str, str]:
    """The development conventions, which `make run` lays out under `dev_dir`."""
    return {
        "CREDITS_GATEWAY_SERVICE_TARGET": "127.0.0.1:50051",
        "CREDITS_GATEWAY_CA_FILE": str(dev_dir / "pki" / "ca.pem"),
        "CREDITS_GATEWAY_CERT_FILE": str(dev_dir / "pki" / "gateway.pem"),
        "CREDITS_GATEWAY_KEY_FILE": str(dev_dir / "pki" / "gateway.key"),
        "CREDITS_STRIPE_WEBHOOK_SECRET_FILE": str(dev_dir / "stripe-webhook-secret"),
        "CREDITS_GATEWAY_PACKAGES_FILE": str(dev_dir / "credit-packages.toml"),
        # Beside the service's 127.0.0.1:9464.
        "CREDITS_GATEWAY_METRICS_ADDR": "127.0.0.1:9465",
    }


# Loopback is a safe default everywhere; exposing the gateway is a deliberate setting.
LISTEN_ADDR_DEFAULT = "127.0.0.1:8080"
REQUIRED_IN_PRODUCTION = (
    "CREDITS_GATEWAY_SERVICE_TARGET",
    "CREDITS_GATEWAY_CA_FILE",
    "CREDITS_GATEWAY_CERT_FILE",
    "CREDITS_GATEWAY_KEY_FILE",
    "CREDITS_GATEWAY_PACKAGES_FILE",
)
SECRET_FILE_SETTING = "CREDITS_STRIPE_WEBHOOK_SECRET_FILE"  # noqa: S105 (a name, not a secret)
SECRETS_SETTING = "CREDITS_STRIPE_WEBHOOK_SECRETS"
# Stripe's whsec_ secrets are far longer; a short one is a placeholder, not a secret.
WEBHOOK_SECRET_CHARS_MIN = 16
# Rotation needs two; a handful more is already a misconfiguration.
WEBHOOK_SECRETS_MAX = 8
SECRET_FILE_BYTES_MAX = 64 * 1024
PEM_FILE_BYTES_MAX = 1024 * 1024
# A restricted key that may read charges, for refunds that fail (docs/gateway.md).
STRIPE_API_KEY_FILE_SETTING = "CREDITS_GATEWAY_STRIPE_API_KEY_FILE"
STRIPE_API_BASE_SETTING = "CREDITS_GATEWAY_STRIPE_API_BASE"
# Stripe's keys are about 100 characters; a short one is a placeholder, not a key.
STRIPE_API_KEY_CHARS_MIN = 16
STRIPE_API_KEY_CHARS_MAX = 1024
# The key may travel in the clear only to this machine (a stripe-mock or a local stub).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
PORT_MAX = 65535


class SettingsError(Exception):
    """The gateway cannot start; each problem names a setting, never its value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    environment: str
    listen: Address
    service_target: str
    # TLS name to expect on the service's certificate when it differs from the target host.
    service_name_override: str
    ca_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    webhook_secrets: tuple[str, ...] = field(repr=False)
    packages: PackageTable
    account_metadata_key: str
    metrics: Address | None
    # "" = none: a refund that fails cannot give its credits back (docs/gateway.md).
    stripe_api_key: str = field(default="", repr=False)
    stripe_api_base: str = STRIPE_API_BASE_DEFAULT


def parse_address(value: str) -> Address | None:
    host, separator, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port.isdigit() or int(port) > PORT_MAX:
        return None
    return Address(host, int(port))


def _read_limited(path: Path, limit_bytes: int) -> bytes | None:
    try:
        with path.open("rb") as file:
            data = file.read(limit_bytes + 1)
    except OSError:
        return None
    return data if 0 < len(data) <= limit_bytes else None


def split_secrets(text: str) -> list[str]:
    """Secrets separated by commas or newlines; blanks around them ignored."""
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


class _Reader:
    """Collects every problem, so one failed start names all missing settings at once."""

    def __init__(self, env: Mapping[str, str], development: bool) -> None:
        self.env, self.problems = env, list[str]()
        dev_dir = Path(env.get(DEV_DIR_SETTING) or DEV_DIR)
        self.defaults = development_defaults(dev_dir) if development else {}

    def get(self, name: str) -> str:
        return self.env.get(name, "").strip() or self.defaults.get(name, "")

    def required(self, name: str) -> str:
        value = self.get(name)
        if not value:
            self.problems.append(f"{name} is not set")
        return value

    def pem(self, name: str) -> bytes:
        path = self.required(name)
        if not path:
            return b""
        data = _read_limited(Path(path), PEM_FILE_BYTES_MAX)
        if data is None or b"-----BEGIN " not in data:
            self.problems.append(f"{name} does not name a readable PEM file")
            return b""
        return data

    def address(self, name: str, default: str = "") -> Address | None:
        value = self.get(name) or default
        if not value:
            return None
        address = parse_address(value)
        if address is None:
            self.problems.append(f"{name} is not a host:port address")
        return address

    def secrets(self) -> tuple[str, ...]:
        found = split_secrets(self.env.get(SECRETS_SETTING, ""))
        path = self.get(SECRET_FILE_SETTING)
        if path:
            data = _read_limited(Path(path), SECRET_FILE_BYTES_MAX)
            if data is None:
                self.problems.append(f"{SECRET_FILE_SETTING} does not name a readable file")
            else:
                found += split_secrets(data.decode("utf-8", errors="replace"))
        unique = tuple(dict.fromkeys(found))
        if not unique:
            self.problems.append(
                f"no webhook secret: set {SECRET_FILE_SETTING} or {SECRETS_SETTING}"
            )
        elif len(unique) > WEBHOOK_SECRETS_MAX:
            self.problems.append(f"more than {WEBHOOK_SECRETS_MAX} webhook secrets")
        elif any(len(secret) < WEBHOOK_SECRET_CHARS_MIN for secret in unique):
            self.problems.append(
                f"a webhook secret is shorter than {WEBHOOK_SECRET_CHARS_MIN} characters"
            )
        return unique

    def stripe_api_key(self) -> str:
        path = self.get(STRIPE_API_KEY_FILE_SETTING)
        if not path:
            return ""
        data = _read_limited(Path(path), STRIPE_API_KEY_CHARS_MAX)
        key = data.decode("ascii", errors="replace").strip() if data else ""
        if data is None:
            self.problems.append(f"{STRIPE_API_KEY_FILE_SETTING} does not name a readable file")
        elif len(key) < STRIPE_API_KEY_CHARS_MIN or not key.isprintable() or " " in key:
            self.problems.append(f"{STRIPE_API_KEY_FILE_SETTING} does not hold one API key")
            return ""
        return key

    def stripe_api_base(self) -> str:
        value = self.get(STRIPE_API_BASE_SETTING) or STRIPE_API_BASE_DEFAULT
        parts = urlsplit(value)
        secure = parts.scheme == "https" or (
            parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
        )
        if not secure or not parts.hostname or parts.path not in ("", "/") or parts.query:
            self.problems.append(
                f"{STRIPE_API_BASE_SETTING} is not an https:// origin (http:// on loopback only)"
            )
        return value.rstrip("/")

    def packages(self) -> PackageTable | None:
        path = self.required("CREDITS_GATEWAY_PACKAGES_FILE")
        if not path:
            return None
        try:
            return load_table(Path(path))
        except OSError:
            self.problems.append("CREDITS_GATEWAY_PACKAGES_FILE does not name a readable file")
        except PackageTableError as error:
            # The table holds prices, not secrets: its problem is safe and useful to show.
            self.problems.append(f"CREDITS_GATEWAY_PACKAGES_FILE: {error}")
        return None


def load_settings(env: Mapping[str, str]) -> Settings:
    development = env.get("CREDITS_ENV", "") == DEVELOPMENT
    reader = _Reader(env, development)
    for name in REQUIRED_IN_PRODUCTION:
        reader.required(name)
    listen = reader.address("CREDITS_GATEWAY_ADDR", LISTEN_ADDR_DEFAULT)
    ca_pem = reader.pem("CREDITS_GATEWAY_CA_FILE")
    cert_pem = reader.pem("CREDITS_GATEWAY_CERT_FILE")
    key_pem = reader.pem("CREDITS_GATEWAY_KEY_FILE")
    secrets = reader.secrets()
    packages = reader.packages()
    metrics = reader.address("CREDITS_GATEWAY_METRICS_ADDR")
    stripe_api_key = reader.stripe_api_key()
    stripe_api_base = reader.stripe_api_base()
    if reader.problems or listen is None or packages is None:
        # Required settings are checked up front and again when read: name each once.
        raise SettingsError(list(dict.fromkeys(reader.problems)))
    return Settings(
        environment=DEVELOPMENT if development else "production",
        listen=listen,
        service_target=reader.get("CREDITS_GATEWAY_SERVICE_TARGET"),
        service_name_override=reader.get("CREDITS_GATEWAY_SERVICE_NAME"),
        ca_pem=ca_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        webhook_secrets=secrets,
        packages=packages,
        account_metadata_key=reader.get("CREDITS_GATEWAY_ACCOUNT_METADATA_KEY"),
        metrics=metrics,
        stripe_api_key=stripe_api_key,
        stripe_api_base=stripe_api_base,
    )
