"""Builds a node from Settings: the only module that knows every part (store backend, storage, API, workers).

- `ltxserve serve`: the API, its housekeeping and webhook delivery, and a supervisor with one worker process per GPU;
  with `--workers 0`, an API node alone (workers run elsewhere, as `ltxserve worker`, on the same store).
- `ltxserve worker`: one worker in the foreground, a node of its own.
Nodes share state only through the store (`--store`) and the files (`--files`), so they may live on several hosts.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid

from ltxserve.config import Settings
from ltxserve.jobs.store import JobStore
from ltxserve.storage import FileStorage, storage_from_settings

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


def build_storage(settings: Settings) -> FileStorage:
    """Where uploads and outputs live (`settings.files`, default DATA_DIR/files; a shared mount for several hosts)."""
    return storage_from_settings(settings)


# --- workers ------------------------------------------------------------------------------------------------------

def run_worker_node(settings: Settings, worker_id: str, parent_pid: int | None = None) -> None:
    """One worker, in this process, until told to stop: a supervisor's child (parent_pid) or `ltxserve worker`."""
    from ltxserve.worker.runner import worker_main

    worker_main(settings, worker_id, build_store(settings), build_storage(settings), parent_pid)


def worker(settings: Settings) -> None:
    """`ltxserve worker`: one worker node in the foreground (SIGTERM or Ctrl-C stops it cleanly)."""
    from ltxserve.logs import configure_logging

    worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}-node"
    configure_logging(settings.log_level, settings.log_format, f"worker[{worker_id}]")
    if settings.gpu is not None:  # before anything loads CUDA: the worker sees only its GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(settings.gpu)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log.info("worker node %s: store %s, files %s", worker_id, settings.store or settings.db_path, settings.files_dir)
    run_worker_node(settings, worker_id)


# --- the API node -------------------------------------------------------------------------------------------------

class NodeServices:
    """What runs beside the API in every `serve` node: housekeeping (deadlines, retention, lost workers) and webhook
    delivery."""

    def __init__(self, settings: Settings, store: JobStore, storage: FileStorage, keep_workers=tuple):
        from ltxserve.jobs.housekeeping import Housekeeper
        from ltxserve.jobs.webhooks import WebhookDeliverer

        self.housekeeper = Housekeeper(store, storage.delete, lost_after_seconds=settings.worker_lost_after_seconds,
                                       max_attempts=settings.max_attempts, keep=keep_workers)
        self.webhooks = WebhookDeliverer(store, settings)

    def start(self) -> None:
        self.housekeeper.start()
        self.webhooks.start()

    def stop(self) -> None:
        self.housekeeper.stop()
        self.webhooks.stop()


def serve(settings: Settings) -> None:
    """`ltxserve serve`: the API with its workers in one process tree, or (`--workers 0`) the API node alone."""
    from ltxserve.api.app import create_app
    from ltxserve.api.server import (WORKER_GRACE_SECONDS, ConfigurationError, StoppingServer, check_exposure,
                                     uvicorn_config)
    from ltxserve.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, "api")
    check_exposure(settings)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = build_store(settings)
    storage = build_storage(settings)
    app = create_app(settings, store, storage=storage)
    supervisor = None
    services = NodeServices(settings, store, storage,
                            keep_workers=lambda: supervisor.running_worker_ids() if supervisor is not None else ())

    def stop_node() -> None:
        if supervisor is not None:
            supervisor.stop(grace_seconds=WORKER_GRACE_SECONDS)
        services.stop()

    server = StoppingServer(uvicorn_config(settings, app), on_exit=stop_node)
    if settings.workers != 0:
        from ltxserve.worker.supervisor import Supervisor

        def stop_serving(reason: str) -> None:  # no worker can ever start: exit rather than queue jobs forever
            server.should_exit = True

        supervisor = Supervisor(settings, store, on_give_up=stop_serving, worker_entry=run_worker_node)
        supervisor.start()
    else:
        log.info("API node only (--workers 0): jobs run on worker nodes (`ltxserve worker`) sharing this store")
    services.start()
    log.info("ltxserve listening on %s (queue: %s/queue, run: %s/run)", settings.base_url(), settings.base_url(),
             settings.base_url())
    # uvicorn re-raises the SIGTERM it caught once it has drained; with the default action that would kill this
    # process before the workers are stopped and their jobs re-queued. Handled (as nothing) it lets `finally` run.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        server.stop_workers()
    if supervisor is not None and supervisor.failure:
        from ltxserve.worker.supervisor import WorkersFailed

        supervisor.fail_queued_jobs(supervisor.failure)  # jobs submitted while the server was shutting down
        raise WorkersFailed(supervisor.failure)
