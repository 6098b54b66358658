"""The worker process: build the endpoints once, then claim jobs and run them until told to stop.

One process per GPU. Everything a job does reaches the client through the store: logs, progress, the output file,
the final result or error. No exception escapes a job: bad input, endpoint errors and bugs all end as a COMPLETED
status with a reason, and the worker goes on to the next job.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ltxserve.config import Settings
from ltxserve.engine.contract import Endpoint, EndpointError, JobCancelled, load_specs
from ltxserve.engine.net import install_own_file_lookup
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.store import Job, JobStore
from ltxserve.logs import request_context
from ltxserve.protocol import ErrorType, File
from ltxserve.storage import FileStorage
from ltxserve.stored_files import own_file_lookup

log = logging.getLogger("ltxserve.worker")


def validation_error_body(exc: ValidationError) -> dict:
    """pydantic errors in fal's (FastAPI's) 422 shape."""
    detail = []
    for e in exc.errors(include_url=False):
        item = {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
        if "ctx" in e:
            item["ctx"] = {k: str(v) for k, v in e["ctx"].items()}
        detail.append(item)
    return {"detail": detail}


class StoreJobContext:
    """JobContext backed by the store: what the endpoint says becomes the job's logs, progress and files."""

    def __init__(self, store: JobStore, storage: FileStorage, job: Job):
        self.store = store
        self.storage = storage
        self.job = job
        self.request_id = job.request_id
        self._last_cancel_check = 0.0
        self._cancelled = False

    def log(self, message: str, level: str = "INFO") -> None:
        self.store.append_log(self.request_id, message, level)

    def progress(self, step: int, total: int, stage: str) -> None:
        self.store.set_progress(self.request_id, step, total, stage)

    def cancelled(self) -> bool:
        if not self._cancelled:
            self._cancelled = self.store.is_cancel_requested(self.request_id)
        return self._cancelled

    def save_file(self, data: bytes | Path, file_name: str, content_type: str) -> File:
        record = self.storage.save(data, file_name, content_type, request_id=self.request_id)
        self.store.add_file(record)  # indexed: it expires with this job
        return File(url=self.storage.url_for(record), content_type=content_type, file_name=record.file_name,
                    file_size=record.file_size)


class Worker:
    def __init__(self, settings: Settings, worker_id: str, store: JobStore, storage: FileStorage):
        self.settings = settings
        self.worker_id = worker_id
        self.store = store
        self.storage = storage
        self.specs = {s.endpoint_id: s for s in load_specs(settings.endpoints)}
        self.endpoints: dict[str, Endpoint] = {}
        self._stop = threading.Event()  # stop claiming
        self._stopped = threading.Event()  # serve_forever has returned
        self._ready = False
        self.current: str | None = None  # the request id of the job in hand
        self._claiming = threading.Lock()  # a claim and `current` change together (see _drop_stale_holds)
        # Input URLs naming this server's files are read by id through the store (never a path from the URL).
        install_own_file_lookup(own_file_lookup(self.store, storage))

    def build_endpoints(self) -> None:
        for endpoint_id, spec in self.specs.items():
            log.info("worker %s: loading %s", self.worker_id, endpoint_id)
            self.endpoints[endpoint_id] = spec.build(self.settings)
        self._ready = True
        self.store.heartbeat(self.worker_id, ready=True, info={"pid": os.getpid(), "endpoints": list(self.specs)})

    def _heartbeats(self) -> None:
        # JobStore methods are safe from several threads (a backend keeps a connection per thread if it needs one).
        # Beats until serve_forever returns, not merely until stop(): the job in hand is still being worked on, and a
        # silent worker would be reaped (its job run twice).
        while not self._stopped.wait(self.settings.worker_heartbeat_seconds):
            try:
                self.store.heartbeat(self.worker_id, ready=self._ready, info={"pid": os.getpid()})
                self._drop_stale_holds()
            except Exception:
                log.exception("heartbeat failed")

    def _drop_stale_holds(self) -> None:
        """Put back jobs the store says this worker holds but it is not running. That happens when the store lost
        their completion (a Redis crash loses its last second of writes): this worker's heartbeats go on, so no
        reaper would ever free them. The put-back is a retry not counted against the job."""
        with self._claiming:
            current = self.current
            held = self.store.held_jobs(self.worker_id)
        for request_id in held:
            if request_id != current:
                log.warning("job %s is recorded as held by this worker, which is not running it; putting it back",
                            request_id)
                self.store.release_job(request_id, self.worker_id,
                                       "the worker holding it was not running it (the store lost its outcome)",
                                       self.settings.max_attempts + 1)

    def run_job(self, job: Job) -> None:
        with request_context(job.request_id):  # every log record about this job carries its request id
            self._run_job(job)

    def _run_job(self, job: Job) -> None:
        spec = self.specs[job.endpoint_id]
        ctx = StoreJobContext(self.store, self.storage, job)
        started = time.perf_counter()
        try:
            inp: BaseModel = spec.input_model.model_validate(job.input)
            output = self.endpoints[job.endpoint_id].run(inp, ctx)
            outcome = Outcome.ok(output.model_dump(mode="json"))
        except ValidationError as exc:
            outcome = Outcome.failed("Input validation failed", ErrorType.VALIDATION_ERROR.value,
                                     validation_error_body(exc), 422)
        except JobCancelled:
            ctx.log("Cancelled", "WARN")
            outcome = Outcome.cancelled()
        except EndpointError as exc:
            ctx.log(exc.message, "ERROR")
            outcome = Outcome.failed(exc.message, exc.error_type, exc.body(), exc.status_code)
        except Exception as exc:  # a bug or a runtime failure (e.g. CUDA OOM): fail the job, keep the worker
            log.error("job %s failed:\n%s", job.request_id, traceback.format_exc())
            message = f"Internal error while generating: {type(exc).__name__}"
            ctx.log(message, "ERROR")
            outcome = Outcome.failed(message, ErrorType.INTERNAL_ERROR.value,
                                     {"detail": message, "error_type": ErrorType.INTERNAL_ERROR.value}, 500)
        elapsed = time.perf_counter() - started
        if not self._report(job.request_id, outcome.with_time(elapsed)):
            return
        log.info("job finished in %.1f s: %s", elapsed,
                 f"{outcome.error_type}: {outcome.error}" if outcome.is_error else "ok")

    def _report(self, request_id: str, outcome: Outcome) -> bool:
        """Store the outcome while this worker still holds the job, riding out a store that is briefly away.
        If the store stays away, the job is not lost: its holder is reaped and the job retried elsewhere."""
        delay = 0.5
        deadline = time.monotonic() + STORE_OUTAGE_PATIENCE_SECONDS
        while True:
            try:
                if not self.store.complete(request_id, outcome, worker_id=self.worker_id):
                    log.warning("job %s is no longer held by this worker (taken for lost, cancelled or completed "
                                "elsewhere): its outcome is dropped", request_id)
                    return False
                return True
            except Exception:
                if time.monotonic() > deadline:
                    log.exception("could not store the outcome of %s; the job will be retried by another worker",
                                  request_id)
                    return False
                log.warning("the store is unreachable; retrying the outcome of %s in %.1f s", request_id, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        try:
            self._serve(poll_interval)
        finally:
            self._stopped.set()

    def _serve(self, poll_interval: float) -> None:
        self.store.heartbeat(self.worker_id, ready=False, info={"pid": os.getpid()})
        self.build_endpoints()
        endpoint_ids = list(self.endpoints)
        idle = poll_interval
        outage = 0.5
        while not self._stop.is_set():
            try:
                with self._claiming:
                    job = self.store.claim_next(self.worker_id, endpoint_ids)
                    self.current = None if job is None else job.request_id
            except Exception as exc:  # the store is away (a Redis restart, a network cut): wait for it, don't exit
                log.warning("claiming failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, outage)
                self._stop.wait(outage)
                outage = min(outage * 2, 10.0)
                continue
            outage = 0.5
            if job is None:
                # Back off gently while idle; a claim is one indexed query.
                self._stop.wait(idle)
                idle = min(idle * 1.5, 0.25)
                continue
            idle = poll_interval
            log.info("worker %s: running %s (attempt %d)", self.worker_id, job.request_id, job.attempts)
            try:
                self.run_job(job)
            finally:
                self.current = None

    def stop(self) -> None:
        self._stop.set()

    def release_held_jobs(self, reason: str) -> list[str]:
        """Put back what this worker holds, as a retry that is not counted against the job, and forget the worker."""
        return self.store.release_worker_jobs(self.worker_id, reason, self.settings.max_attempts + 1)


# How long a finished job's outcome is retried against an unreachable store before the job is left to be retried.
STORE_OUTAGE_PATIENCE_SECONDS = 120.0

# A worker node told to stop (SIGTERM, Ctrl-C) finishes the job in hand if it can within this grace, else puts it back
# in the queue and exits: inside docker's 10 s between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 8.0


def _die_with_parent(parent_pid: int) -> None:
    """Exit when the supervisor is gone (e.g. kill -9 of the server), so no orphan holds a GPU."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(1.0)


def worker_main(settings: Settings, worker_id: str, store: JobStore, storage: FileStorage,
                parent_pid: int | None = None) -> None:
    """Run one worker until SIGTERM (the wiring module builds the store and storage and calls this)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker[{worker_id}] %(levelname)s %(message)s")
    if parent_pid is not None:
        threading.Thread(target=_die_with_parent, args=(parent_pid,), daemon=True).start()
    worker = Worker(settings, worker_id, store, storage)
    if parent_pid is not None:  # a supervisor's child: the supervisor handles the job in hand when it stops us
        signal.signal(signal.SIGTERM, lambda *_: worker.stop())
        worker.serve_forever()
        return
    # A worker node on its own (`ltxserve worker`): nobody else will put its job back if it is told to stop.
    def give_up_after_grace() -> None:
        if worker.current is not None and not _stopped.wait(STOP_GRACE_SECONDS):
            log.warning("job %s did not finish within %g s of the stop signal; putting it back in the queue",
                        worker.current, STOP_GRACE_SECONDS)
            worker.release_held_jobs("worker node stopped while the job ran")
            os._exit(0)

    _stopped = threading.Event()

    def on_stop(*_) -> None:
        if not worker._stop.is_set():
            log.info("worker %s: stopping (finishing the job in hand, if any)", worker_id)
            worker.stop()
            threading.Thread(target=give_up_after_grace, name="stop-grace", daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    try:
        worker.serve_forever()
    finally:
        _stopped.set()
        worker.release_held_jobs("worker node stopped")
    log.info("worker %s: stopped", worker_id)
