"""The HTTP server of `ltxserve serve`: exposure checks and uvicorn, stopping the node's workers on SIGTERM.

The node itself (store, storage, supervisor or none) is assembled in ltxserve/wiring.py.
"""

from __future__ import annotations

import ipaddress
import logging
import threading

import uvicorn

from ltxserve.config import Settings

log = logging.getLogger("ltxserve.serve")


class ConfigurationError(Exception):
    pass


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """No API key means loopback only, unless the operator says otherwise in so many words."""
    if settings.api_keys:
        return
    if is_loopback(settings.host):
        log.warning("No API key configured: the server is open to anyone on this machine (listening on %s only).",
                    settings.host)
        return
    if not settings.allow_unauthenticated_public:
        raise ConfigurationError(
            f"Refusing to listen on {settings.host} without an API key. Pass --api-key KEY (or LTXSERVE_API_KEYS), "
            "listen on 127.0.0.1, or pass --allow-unauthenticated-public if the network is trusted."
        )
    log.warning("No API key configured and listening on %s: anyone who can reach it can use it.", settings.host)


def uvicorn_config(settings: Settings, app) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, log_level=settings.log_level,
        access_log=settings.access_log,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=SHUTDOWN_DRAIN_SECONDS,
    )


# SIGTERM must end `serve` within docker's 10 s grace period: open connections (status streams, /run waits) get
# SHUTDOWN_DRAIN_SECONDS while, at the same time, workers get WORKER_GRACE_SECONDS to stop before they are killed;
# the jobs they held go back to the queue for the next start.
SHUTDOWN_DRAIN_SECONDS = 3
WORKER_GRACE_SECONDS = 4.0


class StoppingServer(uvicorn.Server):
    """uvicorn's server, stopping the workers as soon as the exit signal arrives rather than after the drain."""

    def __init__(self, config: uvicorn.Config, on_exit):
        super().__init__(config)
        self._on_exit = on_exit
        self._stopper: threading.Thread | None = None
        self._lock = threading.Lock()

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self._start_stopper()

    def _start_stopper(self) -> None:
        with self._lock:
            if self._stopper is None:
                self._stopper = threading.Thread(target=self._on_exit, name="stop-workers", daemon=True)
                self._stopper.start()

    def stop_workers(self) -> None:
        self._start_stopper()
        self._stopper.join()
