"""Floor (a), the transport: the same contract over the same mTLS, answered from memory
by a bare grpc.aio server (no interceptors, no database). What a Python gRPC server on
this machine can do at best, and so what the service could at most reach.

`python -m bench.floor --address 127.0.0.1:PORT --pki DIR` serves until SIGTERM.
"""

import argparse
import asyncio
import datetime
import signal
import uuid
from pathlib import Path

import grpc

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc

RESERVATION_TTL = datetime.timedelta(minutes=15)


class MemoryServicer(credits_pb2_grpc.CreditsServiceServicer):
    """Reserve and Confirm kept in a dict; Grant only acknowledged."""

    def __init__(self) -> None:
        self._reservations: dict[str, pb.Reservation] = {}

    async def Grant(
        self, request: pb.GrantRequest, context: grpc.aio.ServicerContext
    ) -> pb.GrantResponse:
        return pb.GrantResponse(
            grant=pb.Grant(
                grant_id=str(uuid.uuid4()),
                account_id=request.account_id,
                original_amount=request.amount,
                remaining_amount=request.amount,
                source=request.source,
            )
        )

    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveResponse:
        now = datetime.datetime.now(datetime.UTC)
        reservation = pb.Reservation(
            reservation_id=str(uuid.uuid4()),
            account_id=request.account_id,
            amount=request.amount,
            status=pb.RESERVATION_STATUS_RESERVED,
        )
        reservation.created_at.FromDatetime(now)
        reservation.expires_at.FromDatetime(now + RESERVATION_TTL)
        self._reservations[reservation.reservation_id] = reservation
        return pb.ReserveResponse(reservation=reservation)

    async def Confirm(
        self, request: pb.ConfirmRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmResponse:
        reservation = self._reservations.pop(request.reservation_id)
        reservation.status = pb.RESERVATION_STATUS_CONFIRMED
        reservation.confirmed_amount = request.amount
        return pb.ConfirmResponse(reservation=reservation)


async def serve(address: str, pki: Path) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    # The generated base class answers UNIMPLEMENTED for the RPCs the benchmark never calls.
    servicer = MemoryServicer()  # type: ignore[abstract]
    credits_pb2_grpc.add_CreditsServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(address, credentials)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--pki", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.pki))


if __name__ == "__main__":
    main()
