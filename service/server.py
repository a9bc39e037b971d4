"""Builds the gRPC server: the servicer behind the interceptor chain, health and
reflection, TLS, and every safety option set explicitly."""

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from credits.v1 import credits_pb2, credits_pb2_grpc
from service import limits
from service.interceptors import Authenticate, SanitizeErrors
from service.ledger import Ledger
from service.servicer import CreditsServicer
from service.settings import Settings

SERVICE_NAME = credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].full_name
# Clients reconnect at least this often, which rebalances them across instances and
# picks up rotated certificates.
MAX_CONNECTION_AGE_MS = 30 * 60 * 1000
MAX_CONNECTION_AGE_GRACE_MS = 30 * 1000
# Clients may ping this often to keep idle connections alive through load balancers.
KEEPALIVE_MIN_PING_INTERVAL_MS = 10 * 1000


@dataclass
class Built:
    server: grpc.aio.Server
    port: int
    health: health.HealthServicer


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """mTLS: the server's certificate, and client certificates required and checked
    against the configured CA."""
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=settings.tls_ca_file.read_bytes(),
        require_client_auth=True,
    )


def build_server(settings: Settings, ledger: Ledger, *, reuse_port: bool = False) -> Built:
    server = grpc.aio.server(
        interceptors=[SanitizeErrors(), Authenticate()],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
            # Off unless several worker processes are meant to share one port: otherwise
            # a second server would silently bind the same address.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_PING_INTERVAL_MS),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    credits_pb2_grpc.add_CreditsServiceServicer_to_server(CreditsServicer(ledger), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_secure_port(settings.grpc_addr, server_credentials(settings))
    if port == 0:
        raise OSError("cannot listen on the configured gRPC address")
    return Built(server, port, health_servicer)


async def mark_serving(built: Built) -> None:
    for name in ("", SERVICE_NAME):
        await built.health.set(name, health_pb2.HealthCheckResponse.SERVING)
