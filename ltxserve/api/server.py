"""`ltxserve serve`: the store, the worker supervisor and uvicorn, in one process tree."""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from ltxserve.api.app import create_app
from ltxserve.config import Settings
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.logs import configure_logging
from ltxserve.worker.supervisor import Supervisor, WorkersFailed

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


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format, "api")
    check_exposure(settings)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteJobStore(settings.db_path, default_retention_seconds=settings.result_retention_seconds)
    app = create_app(settings, store)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, log_level=settings.log_level,
        access_log=settings.access_log,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=5,
    ))

    def stop_serving(reason: str) -> None:  # no worker can ever start: exit rather than queue jobs forever
        server.should_exit = True

    supervisor = Supervisor(settings, store, on_give_up=stop_serving)
    supervisor.start()
    log.info("ltxserve listening on %s (queue: %s/queue, run: %s/run)", settings.base_url(), settings.base_url(),
             settings.base_url())
    try:
        server.run()
    finally:
        supervisor.stop()
    if supervisor.failure:
        supervisor.fail_queued_jobs(supervisor.failure)  # jobs submitted while the server was shutting down
        raise WorkersFailed(supervisor.failure)
