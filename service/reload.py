"""Key rotation without a restart: on SIGHUP the service rereads the callers file and the
TLS files (certificate, key and, in mtls mode, the client CA).

Each file set is checked whole before it replaces the one in force; a file that cannot
be used is refused with a logged error and the service goes on with what it had, so a
typo during a rotation never locks callers out. Calls and connections in flight are
untouched: a call finishes with the callers it was authenticated by, and a connection
keeps the certificate of its handshake.
"""

import logging

from service.access.callers import CallersError, load_for_mode
from service.access.tls import TlsError
from service.ops import metrics
from service.rpc.server import Built
from service.settings import AuthMode, Settings

log = logging.getLogger("credits.reload")


def reload_callers(settings: Settings, built: Built) -> bool:
    """Replace the callers in force by the file as it is now; False if it is refused."""
    try:
        callers = load_for_mode(
            settings.callers_file, certificates=settings.auth_mode is AuthMode.MTLS
        )
    except CallersError as exc:
        log.error("reload refused", extra={"file": "CREDITS_CALLERS_FILE", "error": str(exc)})
        metrics.CONFIG_RELOADS.labels(file="callers", result="refused").inc()
        return False
    built.callers.replace(callers)
    log.info("reloaded", extra={"file": "CREDITS_CALLERS_FILE", "callers": len(callers.by_name)})
    metrics.CONFIG_RELOADS.labels(file="callers", result="ok").inc()
    return True


def reload_certificates(built: Built) -> bool:
    """Serve the TLS files as they are now to new connections; False if they are refused.
    True with nothing to do in insecure mode."""
    if built.certificates is None:
        return True
    try:
        built.certificates.reload()
    except TlsError as exc:
        log.error("reload refused", extra={"file": "tls", "error": str(exc)})
        metrics.CONFIG_RELOADS.labels(file="tls", result="refused").inc()
        return False
    log.info("reloaded", extra={"file": "tls"})
    metrics.CONFIG_RELOADS.labels(file="tls", result="ok").inc()
    return True


def reload(settings: Settings, built: Built) -> bool:
    """Both reloads, each independent of the other (the SIGHUP handler); True if both
    files were taken."""
    callers_taken = reload_callers(settings, built)
    certificates_taken = reload_certificates(built)
    return callers_taken and certificates_taken
