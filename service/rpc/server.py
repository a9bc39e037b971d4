"""Builds the gRPC server: the servicer behind the interceptor chain, health and
reflection, TLS, and every safety option set explicitly."""

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.access import contract, decoding
from service.access.authentication import Authenticate
from service.access.authorization import Authorize
from service.access.callers import LiveCallers
from service.access.interceptors import SanitizeErrors
from service.access.ratelimit import Limiter, RateLimit
from service.access.tls import ServerCertificates
from service.ledger import limits
from service.ledger.operations import Ledger
from service.rpc import admission
from service.rpc import health as credits_health
from service.rpc.servicer import CreditsServicer
from service.settings import AuthMode, Settings

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
    # Holds the Redis connections, if any: close it after the server has stopped.
    limiter: Limiter
    # What a reload (service.reload) replaces while serving.
    callers: LiveCallers
    certificates: ServerCertificates | None


def server_certificates(settings: Settings) -> ServerCertificates | None:
    """mtls: the server's certificate, and client certificates required and checked
    against the configured CA. tls: the server's certificate only. insecure: None."""
    if settings.auth_mode is AuthMode.INSECURE:
        return None
    files = settings.tls_files
    # Settings require the files of the mode; never quietly serve with less security.
    if files is None or (settings.auth_mode is AuthMode.MTLS) != (files.ca_file is not None):
        raise ValueError("the TLS files of the authentication mode are not configured")
    return ServerCertificates(files)


def interceptor_chain(
    settings: Settings, limiter: Limiter, callers: LiveCallers
) -> list[grpc.aio.ServerInterceptor]:
    """Outermost first. Sanitizing wraps everything, so that a failure anywhere becomes a
    clean status; identity comes before permission, which comes before counting, so
    that an unknown caller learns nothing about permissions and a refused call spends
    no one's rate limit."""
    return [
        SanitizeErrors(),
        Authenticate(callers, certificates=settings.auth_mode is AuthMode.MTLS),
        Authorize(),
        RateLimit(limiter, settings.reserve_rate_per_account),
    ]


def build_server(settings: Settings, ledger: Ledger, *, sharing: int = 1) -> Built:
    """`sharing`: how many processes serve this address together (service.processes)."""
    limiter = Limiter(settings.redis_url)
    callers = LiveCallers(settings.callers)
    admission.check_limits(settings, MAX_CONNECTION_AGE_GRACE_MS / 1000)
    certificates_name_callers = settings.auth_mode is AuthMode.MTLS
    server = grpc.aio.server(
        # Admission comes first: it decides on a call before its request is read.
        interceptors=[
            admission.Admission(settings, callers, certificates=certificates_name_callers),
            *interceptor_chain(settings, limiter, callers),
        ],
        # A backstop: callers and peers that are no caller have budgets of their own
        # (service.rpc.admission), counted as soon as a call's headers arrive.
        maximum_concurrent_rpcs=admission.grpc_calls_max(settings),
        options=[
            ("grpc.max_concurrent_streams", admission.STREAMS_PER_CONNECTION_MAX),
            ("grpc.max_receive_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
            # Only the workers of one supervisor share an address; otherwise a second
            # server would silently bind the same one.
            ("grpc.so_reuseport", int(sharing > 1)),
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_PING_INTERVAL_MS),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    decoding.add_servicer(CreditsServicer(ledger), contract.SERVICE, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (contract.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    certificates = server_certificates(settings)
    if certificates is None:
        # Only reachable in development on loopback (settings refuse it elsewhere).
        port = server.add_insecure_port(settings.grpc_addr)
    else:
        port = server.add_secure_port(settings.grpc_addr, certificates.credentials())
    if port == 0:
        raise OSError("cannot listen on the configured gRPC address")
    return Built(server, port, health_servicer, limiter, callers, certificates)


async def mark_serving(built: Built) -> None:
    await credits_health.set_serving(built.health, True)
