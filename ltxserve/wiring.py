"""Builds a node from Settings: the only module that knows every part (store backend, storage, API, workers).

`ltxserve serve` runs the API with a supervisor and its worker processes (or, with --workers 0, the API alone);
`ltxserve worker` runs one worker in the foreground. Both reach the same store, so they may live on different hosts.
"""

from __future__ import annotations

import logging
import signal

from ltxserve.config import Settings
from ltxserve.jobs.store import JobStore

log = logging.getLogger("ltxserve.serve")


def build_store(settings: Settings) -> JobStore:
    """The job store `settings.store` names: None or "sqlite" = the SQLite file under data_dir; redis://... = Redis."""
    target = settings.store
    if target is None or target == "sqlite":
        from ltxserve.jobs.sqlite import SqliteJobStore

        return SqliteJobStore(settings.db_path, default_retention_seconds=settings.result_retention_seconds)
    if target.startswith(("redis://", "rediss://", "unix://")):
        from ltxserve.jobs.redis_store import RedisJobStore

        return RedisJobStore(target, default_retention_seconds=settings.result_retention_seconds)
    raise ValueError(f"--store: expected sqlite or a redis:// URL, got {target!r}")


def run_worker_node(settings: Settings, worker_id: str, parent_pid: int | None = None) -> None:
    """One worker, in this process, until SIGTERM (a supervisor's child, or `ltxserve worker`)."""
    from ltxserve.worker.runner import worker_main

    worker_main(settings, worker_id, build_store(settings), parent_pid)


def serve(settings: Settings) -> None:
    """`ltxserve serve`: the API, with a supervisor and its worker processes, in one process tree."""
    from ltxserve.api.app import create_app
    from ltxserve.api.server import (WORKER_GRACE_SECONDS, ConfigurationError, StoppingServer, check_exposure,
                                     uvicorn_config)
    from ltxserve.logs import configure_logging
    from ltxserve.worker.supervisor import Supervisor, WorkersFailed

    configure_logging(settings.log_level, settings.log_format, "api")
    check_exposure(settings)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    store = build_store(settings)
    app = create_app(settings, store)
    server = StoppingServer(uvicorn_config(settings, app),
                            on_exit=lambda: supervisor.stop(grace_seconds=WORKER_GRACE_SECONDS))

    def stop_serving(reason: str) -> None:  # no worker can ever start: exit rather than queue jobs forever
        server.should_exit = True

    supervisor = Supervisor(settings, store, on_give_up=stop_serving, worker_entry=run_worker_node)
    supervisor.start()
    log.info("ltxserve listening on %s (queue: %s/queue, run: %s/run)", settings.base_url(), settings.base_url(),
             settings.base_url())
    # uvicorn re-raises the SIGTERM it caught once it has drained; with the default action that would kill this
    # process before the workers are stopped and their jobs re-queued. Handled (as nothing) it lets `finally` run.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        server.stop_workers()
    if supervisor.failure:
        supervisor.fail_queued_jobs(supervisor.failure)  # jobs submitted while the server was shutting down
        raise WorkersFailed(supervisor.failure)
