"""`python -m service.probe ADDRESS`: the health probe for orchestrators and load balancers.

Asks `grpc.health.v1.Health/Check` and exits 0 when the answer is SERVING, 1 otherwise
(NOT_SERVING, unreachable, refused). It needs no caller: in mtls mode any certificate of
the CA will do, in tls mode only the CA, and no reflection (which is for callers), so it
works where `grpcurl` without the proto files cannot.
"""

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROBE_TIMEOUT_SECONDS_DEFAULT = 5.0
EXIT_SERVING = 0
EXIT_NOT_SERVING = 1


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.plaintext:
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.cacert).read_bytes() if args.cacert else None,
        private_key=Path(args.key).read_bytes() if args.key else None,
        certificate_chain=Path(args.cert).read_bytes() if args.cert else None,
    )
    return grpc.secure_channel(args.address, credentials)


def check(args: argparse.Namespace) -> str:
    """The status name health answers, or the gRPC code name of the failure."""
    with _channel(args) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_seconds
            )
        except grpc.RpcError as err:
            return str(err.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def parser() -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(prog="python -m service.probe", description=__doc__)
    parsed.add_argument("address", help="host:port of the service")
    parsed.add_argument("--cacert", help="CA of the server's certificate (tls, mtls)")
    parsed.add_argument("--cert", help="a client certificate of the CA (mtls)")
    parsed.add_argument("--key", help="its private key (mtls)")
    parsed.add_argument("--plaintext", action="store_true", help="no TLS (insecure mode)")
    parsed.add_argument("--service", default="", help='the name to check ("" is the server)')
    parsed.add_argument("--timeout-seconds", type=float, default=PROBE_TIMEOUT_SECONDS_DEFAULT)
    return parsed


def main(argv: list[str] | None = None) -> int:
    status = check(parser().parse_args(argv))
    print(status)
    return EXIT_SERVING if status == "SERVING" else EXIT_NOT_SERVING


if __name__ == "__main__":
    sys.exit(main())
