"""`python -m chaos.pgctl PGDATA restart|stop`: controls the run's embedded PostgreSQL
from a process of its own. pgserver runs pg_ctl as its own system user when started as
root, which switches users between fork and exec; in a process with gRPC's threads that
is unsafe (pg_ctl dies with SIGSEGV or SIGABRT), in a fresh process it is not."""

import os
import sys
from pathlib import Path

import pgserver
from pgserver import _commands as pg_commands  # pg_ctl, for the stops pgserver cannot do

PG_CTL_TIMEOUT_SECONDS = 60


def main(argv: list[str]) -> int:
    pgdata, action = Path(argv[0]), argv[1]
    # pgserver's own rule: as root, PostgreSQL runs as its system user.
    user = "pgserver" if os.geteuid() == 0 else None
    if action == "restart":
        # A crash-like stop (no checkpoint: the server recovers from its WAL), then
        # pgserver starts it again with its own options and socket directory.
        pg_commands.pg_ctl(
            ["-w", "-m", "immediate", "stop"],
            pgdata=pgdata,
            user=user,
            timeout=PG_CTL_TIMEOUT_SECONDS,
        )
        pgserver.get_server(pgdata, cleanup_mode=None)
    elif action == "stop":
        pg_commands.pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=PG_CTL_TIMEOUT_SECONDS
        )
    else:
        print(f"unknown action {action}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
