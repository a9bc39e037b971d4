"""The TLS channel to the service, with every option set explicitly."""

from os import PathLike
from pathlib import Path

import grpc

# The service refuses messages over 64 KiB; a full ListUsage page is well under that.
# Beyond this an answer is not one of the service's.
GRPC_MESSAGE_BYTES_MAX = 256 * 1024
# After the service restarts, reconnect within seconds rather than gRPC's default of up
# to two minutes, so that retries find it.
RECONNECT_BACKOFF_INITIAL_MS = 200
RECONNECT_BACKOFF_MAX_MS = 2000
# Pings keep idle connections open through load balancers. The service accepts a ping
# every 10 s at most (server.KEEPALIVE_MIN_PING_INTERVAL_MS); more often gets the
# connection closed with "too_many_pings".
KEEPALIVE_TIME_MS = 30 * 1000
KEEPALIVE_TIMEOUT_MS = 10 * 1000
# Certificates and keys are a few KiB; a larger file is not one.
PEM_FILE_BYTES_MAX = 1024 * 1024


def read_pem(path: str | PathLike[str]) -> bytes:
    data = Path(path).read_bytes()
    if len(data) > PEM_FILE_BYTES_MAX:
        raise ValueError(f"{path} is larger than {PEM_FILE_BYTES_MAX} bytes: not a PEM file")
    return data


def secure_channel(
    target: str,
    *,
    ca_pem: bytes | None = None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A TLS channel to `target`: the service's certificate checked against `ca_pem`
    (the system's roots when None), and, for mTLS, the client's certificate and key.
    `server_name` is the name to expect on the service's certificate when it differs
    from the target's host. Must be called inside the event loop that uses it."""
    if (cert_pem is None) != (key_pem is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)
