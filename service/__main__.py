"""`python -m service`: reads the settings and serves (service.app) until SIGTERM or
SIGINT.

With CREDITS_PROCESSES above 1 (the default on a machine of several cores when
CREDITS_REDIS_URL is set; never without it, see service.settings) this process
becomes the supervisor of service.processes, which runs this module again as each of
its workers. Alone, it names itself in CREDITS_PID_FILE while it serves.
"""

import asyncio
import signal
import sys

import uvloop

from service import processes, settings
from service.app import serve
from service.ops import logs, pidfile


def main() -> None:
    logs.configure()
    try:
        config = settings.load()
    except settings.SettingsError as exc:
        print(f"credits service cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    worker = processes.worker_of(sys.argv[1:])
    if worker is None and config.processes > 1:
        processes.become_supervisor()
    logs.configure(worker=None if worker is None else worker.index)
    logs.enable_access_log(config.access_log)
    if worker is not None:
        processes.die_with_supervisor()
    url, _embedded = processes.database_url(config)
    if worker is None:
        # A SIGHUP sent through the pid file before serve() handles it must not end the
        # service (its default action); the files it would reread were read at start.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        # A worker is signalled through its supervisor, which holds the pid file.
        with (
            pidfile.held(config.pid_file if worker is None else None),
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        ):
            runner.run(serve(config, url, worker))
    except (settings.SettingsError, pidfile.PidFileError) as exc:
        print(f"credits service cannot start: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
