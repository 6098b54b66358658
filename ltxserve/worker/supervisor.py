"""Starts the worker processes, restarts the ones that die, and keeps the store tidy.

A worker's death (crash, OOM kill, kill -9) never loses its job: the job goes back to the queue once, then completes
with an error saying what happened. Jobs held by workers of a previous server (killed -9) are found by their stale
heartbeats and treated the same way. Housekeeping (start deadlines, retention) and webhook delivery run here too.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from ltxserve.config import Settings
from ltxserve.gpus import nvidia_gpu_indices
from ltxserve.jobs.store import JobStore
from ltxserve.jobs.webhooks import WebhookDeliverer
from ltxserve.worker.runner import worker_main

log = logging.getLogger("ltxserve.supervisor")


def default_worker_count(settings: Settings) -> tuple[int, list[str | None]]:
    """One worker per CUDA GPU (each pinned with CUDA_VISIBLE_DEVICES), else one."""
    if settings.workers:
        gpus = _cuda_devices()
        return settings.workers, [gpus[i % len(gpus)] if gpus else None for i in range(settings.workers)]
    gpus = _cuda_devices()
    if gpus:
        return len(gpus), list(gpus)
    return 1, [None]


def _cuda_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    return nvidia_gpu_indices()  # NVML: the API process never loads torch


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker process vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory or kill -9)" if -code == signal.SIGKILL else ""
        return f"worker process died from {name}{hint}"
    return f"worker process exited with code {code}"


@dataclass
class _Slot:
    index: int
    gpu: str | None
    process: mp.process.BaseProcess | None = None
    worker_id: str = ""
    restarts: int = 0
    restart_at: float = 0.0
    history: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store
        self._ctx = mp.get_context("spawn")
        count, gpus = default_worker_count(settings)
        self.slots = [_Slot(index=i, gpu=gpus[i]) for i in range(count)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefix = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.webhooks = WebhookDeliverer(store, settings)

    # --- workers --------------------------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        slot.worker_id = f"{self._prefix}-w{slot.index}-{slot.restarts}"
        env_gpu = slot.gpu
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env_gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = env_gpu  # inherited by the spawned child at start
        try:
            proc = self._ctx.Process(
                target=worker_main, args=(self.settings, slot.worker_id, os.getpid()),
                name=f"ltxserve-worker-{slot.index}", daemon=False,
            )
            proc.start()
        finally:
            if env_gpu is not None:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
        slot.process = proc
        log.info("started worker %s (pid %s, gpu %s)", slot.worker_id, proc.pid, env_gpu)

    def _check_workers(self) -> None:
        now = time.time()
        for slot in self.slots:
            proc = slot.process
            if proc is not None and not proc.is_alive():
                reason = describe_exit(proc.exitcode)
                log.error("%s: %s", slot.worker_id, reason)
                released = self.store.release_worker_jobs(slot.worker_id, reason, self.settings.max_attempts)
                if released:
                    log.warning("released jobs of %s: %s", slot.worker_id, released)
                slot.process = None
                slot.restarts += 1
                # Back off when a worker keeps dying (e.g. a model that cannot load), up to a minute.
                slot.history = [t for t in slot.history if now - t < 300] + [now]
                delay = min(60.0, self.settings.worker_restart_backoff_seconds * 2 ** (len(slot.history) - 1))
                slot.restart_at = now + delay
            if slot.process is None and now >= slot.restart_at and not self._stop.is_set():
                self._spawn(slot)

    def _release_orphans(self) -> None:
        """Jobs IN_PROGRESS under a worker that is neither ours nor alive (a previous server killed -9)."""
        ours = {s.worker_id for s in self.slots if s.process is not None}
        max_age = max(3 * self.settings.worker_heartbeat_seconds, 10.0)
        live = {w["worker_id"] for w in self.store.live_workers(max_age)}
        for worker_id in self.store.in_progress_workers():
            if worker_id in ours or worker_id in live:
                continue
            released = self.store.release_worker_jobs(
                worker_id, "worker lost (no heartbeat; the server or worker was killed)", self.settings.max_attempts
            )
            if released:
                log.warning("recovered jobs of lost worker %s: %s", worker_id, released)

    def _housekeeping(self) -> None:
        self.store.expire_start_deadlines()
        for f in self.store.purge_expired():
            shutil.rmtree(self.settings.files_dir / f.file_id, ignore_errors=True)

    def _loop(self) -> None:
        last_housekeeping = 0.0
        while not self._stop.is_set():
            try:
                self._check_workers()
                now = time.time()
                if now - last_housekeeping >= 1.0:
                    self._release_orphans()
                    self._housekeeping()
                    last_housekeeping = now
            except Exception:
                log.exception("supervisor loop error")
            self._stop.wait(0.2)

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
        self.webhooks.start()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, grace_seconds: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        procs = [s.process for s in self.slots if s.process is not None]
        for p in procs:
            p.terminate()
        deadline = time.time() + grace_seconds
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.time()))
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        # Jobs the stopped workers held go back to the queue for the next start.
        for slot in self.slots:
            if slot.worker_id:
                self.store.release_worker_jobs(slot.worker_id, "server stopped while the job ran",
                                               self.settings.max_attempts + 1)
        self.webhooks.stop()
