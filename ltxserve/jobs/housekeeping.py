"""What every API node does in the background, whatever runs its workers: time out late jobs, delete expired jobs
and their files, and release the jobs of workers that stopped sending heartbeats.

The reaper is what finds a lost worker when workers are separate nodes (`ltxserve worker`, maybe on another host):
no supervisor sees such a process exit, so a worker whose heartbeat is older than `worker_lost_after_seconds` is
taken for dead and its jobs are retried or failed by the lifecycle rules (a supervisor also releases its own
children's jobs the moment they exit, which is faster). Several nodes may reap at once: a release is atomic in the
store, so a job is released once.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from ltxserve.jobs.store import JobStore, StoredFile

log = logging.getLogger("ltxserve.housekeeping")


def reap_lost_workers(store: JobStore, lost_after_seconds: float, max_attempts: int,
                      keep: Iterable[str] = ()) -> dict[str, list[str]]:
    """Release the IN_PROGRESS jobs of every worker without a heartbeat for `lost_after_seconds` (except `keep`).
    Returns {worker_id: released request ids}."""
    live = {w["worker_id"] for w in store.live_workers(lost_after_seconds)} | set(keep)
    released: dict[str, list[str]] = {}
    for worker_id in store.in_progress_workers():
        if worker_id in live:
            continue
        reason = f"worker lost (no heartbeat for {lost_after_seconds:g} s: its process or host stopped)"
        ids = store.release_worker_jobs(worker_id, reason, max_attempts)
        if ids:
            log.warning("released the jobs of lost worker %s: %s", worker_id, ids)
            released[worker_id] = ids
    return released


class Housekeeper:
    """Runs `run_once` every `interval` seconds on a thread; `delete_file` removes a purged file's bytes."""

    def __init__(self, store: JobStore, delete_file: Callable[[StoredFile], None], *, lost_after_seconds: float,
                 max_attempts: int, interval: float = 1.0, keep: Callable[[], Iterable[str]] = tuple):
        self.store = store
        self.keep = keep  # worker ids known alive another way (a supervisor's running children): never reaped
        self.delete_file = delete_file
        self.lost_after_seconds = lost_after_seconds
        self.max_attempts = max_attempts
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: float | None = None) -> None:
        self.store.expire_start_deadlines(now)
        for f in self.store.purge_expired(now):
            self.delete_file(f)
        reap_lost_workers(self.store, self.lost_after_seconds, self.max_attempts, keep=self.keep())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a store hiccup must not end housekeeping
                log.exception("housekeeping failed")
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
