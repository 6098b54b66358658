"""Starts the worker processes and restarts the ones that die.

A worker's death (crash, OOM kill, kill -9) never loses its job: the job goes back to the queue once, then completes
with an error saying what happened. The supervisor sees its children exit and releases their jobs at once; jobs held
by workers it does not own (a previous server killed -9, a worker node on another host) are found by their stale
heartbeats by the node's housekeeping (jobs/housekeeping.py), as are start deadlines and retention.

Fail fast: a worker that dies before its model is loaded (a missing path, unverifiable weights) sends the reason back
over a pipe. The supervisor publishes it in the store (so /readyz shows it), retries a bounded number of times
(settings.worker_max_failed_starts), then stops restarting that slot. When no slot can start, queued jobs complete
with the reason and `on_give_up` tells the server to exit non-zero.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from ltxserve.config import Settings
from ltxserve.gpus import nvidia_gpu_indices
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.store import JobStore
from ltxserve.logs import configure_logging

log = logging.getLogger("ltxserve.supervisor")

# fal's request-error type for "no runner could be scheduled": what queued jobs end with when no worker can start.
NO_RUNNER_ERROR_TYPE = "runner_scheduling_failure"
_REASON_MAX_CHARS = 2000


class WorkersFailed(RuntimeError):
    """No worker slot can ever start (each failed its bounded number of starts); the message says why."""


# What a worker process runs: worker_entry(settings, worker_id, parent_pid), blocking until the worker stops. A
# module-level function (spawn pickles it by name) from the wiring module, which builds the worker's store.
WorkerEntry = Callable[[Settings, str, int], None]


def run_worker(settings: Settings, worker_id: str, parent_pid: int, report, worker_entry: WorkerEntry) -> None:
    """Worker process entry: runs the worker; if it fails before serving, sends the reason to the supervisor."""
    configure_logging(settings.log_level, settings.log_format, f"worker[{worker_id}]")
    try:
        worker_entry(settings, worker_id, parent_pid)
    except BaseException as exc:  # noqa: BLE001 - whatever stopped the worker is the reason it reports
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        reason = f"{type(exc).__name__}: {exc}"[:_REASON_MAX_CHARS]
        logging.getLogger("ltxserve.worker").exception("worker %s could not start", worker_id)
        try:
            report.send(reason)
        finally:
            report.close()
        os._exit(3)


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
    report: object | None = None  # the supervisor's end of the pipe the worker reports a start failure on
    failed_starts: int = 0  # consecutive deaths before the model was loaded
    last_error: str | None = None
    gave_up: bool = False

    @property
    def status_id(self) -> str:
        """The store row that stands for this slot while its worker cannot start (read by /readyz)."""
        return f"{self.worker_id.rsplit('-', 1)[0]}-status"


class Supervisor:
    def __init__(self, settings: Settings, store: JobStore, on_give_up: Callable[[str], None] | None = None, *,
                 worker_entry: WorkerEntry):
        self.settings = settings
        self.store = store
        self.worker_entry = worker_entry
        self.on_give_up = on_give_up
        self.failure: str | None = None  # set once no slot can start
        self._ctx = mp.get_context("spawn")
        count, gpus = default_worker_count(settings)
        self.slots = [_Slot(index=i, gpu=gpus[i]) for i in range(count)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefix = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    # --- workers --------------------------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        slot.worker_id = f"{self._prefix}-w{slot.index}-{slot.restarts}"
        env_gpu = slot.gpu
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env_gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = env_gpu  # inherited by the spawned child at start
        receive, send = self._ctx.Pipe(duplex=False)
        try:
            proc = self._ctx.Process(
                target=run_worker, args=(self.settings, slot.worker_id, os.getpid(), send, self.worker_entry),
                name=f"ltxserve-worker-{slot.index}", daemon=False,
            )
            proc.start()
        finally:
            send.close()  # the child holds its own copy
            if env_gpu is not None:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
        slot.process = proc
        slot.report = receive
        log.info("started worker %s (pid %s, gpu %s)", slot.worker_id, proc.pid, env_gpu)

    def _check_workers(self) -> None:
        now = time.time()
        for slot in self.slots:
            proc = slot.process
            if proc is not None and not proc.is_alive():
                reason = self._start_failure(slot) or describe_exit(proc.exitcode)
                was_ready = self._was_ready(slot.worker_id)
                log.error("%s: %s", slot.worker_id, reason)
                released = self.store.release_worker_jobs(slot.worker_id, reason, self.settings.max_attempts)
                if released:
                    log.warning("released jobs of %s: %s", slot.worker_id, released)
                slot.process = None
                slot.restarts += 1
                if was_ready:
                    slot.failed_starts = 0
                else:
                    self._record_failed_start(slot, reason)
                # Back off when a worker keeps dying (e.g. a model that cannot load), up to a minute.
                slot.history = [t for t in slot.history if now - t < 300] + [now]
                delay = min(60.0, self.settings.worker_restart_backoff_seconds * 2 ** (len(slot.history) - 1))
                slot.restart_at = now + delay
            if slot.process is None and not slot.gave_up and now >= slot.restart_at and not self._stop.is_set():
                self._spawn(slot)
        if self.failure is None and self.slots and all(s.gave_up for s in self.slots):
            self._give_up()

    def running_worker_ids(self) -> list[str]:
        """Workers whose process is alive: the node's reaper leaves them alone even if a heartbeat is late."""
        return [s.worker_id for s in self.slots if s.process is not None and s.process.is_alive()]

    @staticmethod
    def _start_failure(slot: _Slot) -> str | None:
        """The reason a dead worker sent before exiting, if it sent one."""
        conn = slot.report
        slot.report = None
        if conn is None:
            return None
        try:
            return conn.recv() if conn.poll() else None
        except (EOFError, OSError):
            return None
        finally:
            conn.close()

    def _was_ready(self, worker_id: str) -> bool:
        return any(w["worker_id"] == worker_id and w["ready"] for w in self.store.live_workers(float("inf")))

    def _record_failed_start(self, slot: _Slot, reason: str) -> None:
        slot.failed_starts += 1
        slot.last_error = reason
        limit = self.settings.worker_max_failed_starts
        if slot.failed_starts >= limit:
            slot.gave_up = True
            log.error("worker slot %d failed to start %d times; not restarting it: %s",
                      slot.index, slot.failed_starts, reason)
        else:
            log.warning("worker slot %d failed to start (%d of %d): %s", slot.index, slot.failed_starts, limit,
                        reason)
        self._publish_slot(slot)

    def _publish_slot(self, slot: _Slot) -> None:
        """Keep the slot's failure visible in the store (a worker row that is never ready) while it lasts."""
        if slot.last_error is None:
            return
        self.store.heartbeat(slot.status_id, ready=False, info={
            "slot": slot.index, "startup_error": slot.last_error, "failed_starts": slot.failed_starts,
            "max_failed_starts": self.settings.worker_max_failed_starts, "gave_up": slot.gave_up,
        })

    def _refresh_slots(self) -> None:
        ready = {w["worker_id"] for w in self.store.live_workers(float("inf")) if w["ready"]}
        for slot in self.slots:
            if slot.last_error is not None and slot.worker_id in ready:
                # The slot's worker loaded its model after all: its earlier failure is history.
                slot.last_error, slot.failed_starts = None, 0
                self._retire_status(slot)
            self._publish_slot(slot)

    def _retire_status(self, slot: _Slot) -> None:
        # The status row holds no jobs, so "releasing" it only removes the row (through the JobStore interface).
        self.store.release_worker_jobs(slot.status_id, "slot status retired", self.settings.max_attempts)

    def _give_up(self) -> None:
        reasons = sorted({s.last_error for s in self.slots if s.last_error})
        self.failure = "no worker could load the model: " + "; ".join(reasons)
        log.error("%s", self.failure)
        failed = self.fail_queued_jobs(self.failure)
        if failed:
            log.error("completed %d queued job(s) with that error", len(failed))
        if self.on_give_up is not None:
            self.on_give_up(self.failure)

    def fail_queued_jobs(self, message: str) -> list[str]:
        """Complete every queued job of our endpoints with `message` (nothing here can ever run them)."""
        from ltxserve.engine.contract import load_specs

        endpoint_ids = [s.endpoint_id for s in load_specs(self.settings.endpoints)]
        claimer = f"{self._prefix}-unavailable"
        failed = []
        while (job := self.store.claim_next(claimer, endpoint_ids)) is not None:
            self.store.append_log(job.request_id, message, "ERROR")
            self.store.complete(job.request_id, Outcome.failed(
                message, NO_RUNNER_ERROR_TYPE, {"detail": message, "error_type": NO_RUNNER_ERROR_TYPE}, 503))
            failed.append(job.request_id)
        return failed

    def _loop(self) -> None:
        last_refresh = 0.0
        while not self._stop.is_set():
            try:
                self._check_workers()
                now = time.time()
                if now - last_refresh >= 1.0:
                    self._refresh_slots()
                    last_refresh = now
            except Exception:
                log.exception("supervisor loop error")
            self._stop.wait(0.2)

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
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
            if slot.last_error is not None:
                self._retire_status(slot)
            if slot.worker_id:
                self.store.release_worker_jobs(slot.worker_id, "server stopped while the job ran",
                                               self.settings.max_attempts + 1)
