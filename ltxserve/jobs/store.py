"""The job store's interface: the single source of truth for every request's state, logs, result and webhooks.

State machine (the only transitions; each one atomic in the store):

    IN_QUEUE --claim--> IN_PROGRESS --complete(Outcome)--> COMPLETED
    IN_QUEUE --cancel--> COMPLETED (Outcome.cancelled)
    IN_QUEUE --start deadline passed--> COMPLETED (Outcome.timed_out)
    IN_PROGRESS --cancel--> IN_PROGRESS with the cancel flag; whatever it completes with then becomes cancelled
    IN_PROGRESS --worker lost--> IN_QUEUE (retry) or COMPLETED (Outcome.runner_lost / cancelled)

What a job ended with is an `Outcome` (jobs/outcome.py); the rules every backend applies (cancel wins, retry once
then fail, when results expire) live in jobs/lifecycle.py. A failure is COMPLETED with `error` and `error_type`, as
fal reports it; there is no FAILED state on the wire.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from ltxserve.jobs.outcome import Outcome
from ltxserve.protocol import LogEntry, Priority, QueueState


@dataclass
class Job:
    request_id: str
    endpoint_id: str  # full id, e.g. "fal-ai/ltx-video-13b-dev/image-to-video"
    owner: str
    app: str
    input: dict[str, Any]
    state: QueueState = QueueState.IN_QUEUE
    priority: Priority = Priority.NORMAL
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    start_deadline: float | None = None  # from X-Fal-Request-Timeout: not started by then -> request_timeout
    webhook_url: str | None = None
    # Outcome. On success `result` holds the output JSON; on failure `error`/`error_type` say what happened and
    # `error_body`/`status_code` are what the result endpoint answers (e.g. 422 {"detail": [...]}).
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    error_body: dict[str, Any] | None = None
    status_code: int = 200
    inference_time: float | None = None
    attempts: int = 0
    worker_id: str | None = None
    cancel_requested: bool = False
    retention_seconds: int | None = None  # per-request override from X-Fal-Object-Lifecycle-Preference
    expires_at: float | None = None
    sync: bool = False  # submitted through /run: the HTTP caller waits; no queue URLs are handed out
    progress: dict[str, Any] | None = None  # {"step":..,"total":..,"stage":..}


@dataclass
class StoredFile:
    file_id: str
    path: str  # relative to the files directory
    content_type: str
    file_name: str
    file_size: int
    created_at: float
    expires_at: float | None = None
    request_id: str | None = None  # output of this job (expires with it); None for uploads
    complete: bool = True  # False between upload initiate and PUT


@dataclass
class WebhookDelivery:
    request_id: str
    url: str
    body: bytes
    attempts: int = 0
    next_attempt_at: float = 0.0
    delivered_at: float | None = None
    last_error: str | None = None
    gave_up: bool = False


# Generation-time histogram buckets (seconds): from tiny CPU jobs to long 720p videos.
GENERATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


@dataclass
class GenerationHistogram:
    """Cumulative bucket counts (upper bound -> jobs that took at most that long), total count and sum of seconds."""

    buckets: list[tuple[float, int]]
    count: int
    total_seconds: float

    @classmethod
    def of(cls, times: list[float]) -> "GenerationHistogram":
        return cls([(b, sum(1 for t in times if t <= b)) for b in GENERATION_BUCKETS], len(times), float(sum(times)))

    @staticmethod
    def increments(seconds: float) -> list[tuple[str, float]]:
        """The counters one completion adds to (name, amount): a backend stores them as counters that only grow."""
        bucket = next((b for b in GENERATION_BUCKETS if seconds <= b), None)
        return [("generation_count", 1.0), (f"generation_le_{bucket}" if bucket is not None else "generation_le_inf",
                                            1.0), ("generation_sum", seconds)]

    @classmethod
    def from_counters(cls, values: dict[str, float]) -> "GenerationHistogram":
        """The histogram from the counters `increments` built (per-bucket counts made cumulative)."""
        running, buckets = 0, []
        for bound in GENERATION_BUCKETS:
            running += int(values.get(f"generation_le_{bound}", 0))
            buckets.append((bound, running))
        return cls(buckets, int(values.get("generation_count", 0)), float(values.get("generation_sum", 0.0)))


@dataclass
class StoreCounts:
    in_queue: int = 0
    in_progress: int = 0
    completed_ok: int = 0
    completed_error: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class JobStore(abc.ABC):
    """Every method is safe to call from several processes at once (API process, worker processes)."""

    # --- lifecycle of a job ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def submit(self, job: Job) -> Job:
        """Insert a new IN_QUEUE job (created_at set by the store if 0)."""

    @abc.abstractmethod
    def get(self, request_id: str) -> Job | None: ...

    @abc.abstractmethod
    def status_view(self, request_id: str) -> Job | None:
        """A Job with only what a status answer needs (no input, result or error body), and
        `progress` set to {"queue_position": n} while queued: the status hot path, one query."""

    @abc.abstractmethod
    def queue_position(self, request_id: str) -> int:
        """How many queued jobs will be claimed before this one (normal before low, FIFO within)."""

    @abc.abstractmethod
    def claim_next(self, worker_id: str, endpoint_ids: list[str]) -> Job | None:
        """Atomically move the next IN_QUEUE job to IN_PROGRESS for this worker, or None.

        Jobs past their start deadline are completed with error_type 'request_timeout' instead of being claimed.
        """

    @abc.abstractmethod
    def complete(self, request_id: str, outcome: Outcome, *, worker_id: str | None = None) -> bool:
        """Move to COMPLETED (from IN_QUEUE or IN_PROGRESS) with `lifecycle.final_outcome(outcome, cancel flag)`;
        False if it already was (or is unknown). Enqueues the webhook in the same transaction.

        With `worker_id` (a worker reporting its result) the completion applies only while that worker still holds
        the job: a worker that was taken for lost, whose job went back to the queue or to another worker, cannot
        overwrite what the job's current holder will report."""

    @abc.abstractmethod
    def request_cancel(self, request_id: str) -> str:
        """'CANCELLATION_REQUESTED' (queued: completed at once as cancelled; running: flag set),
        'ALREADY_COMPLETED' or 'NOT_FOUND'."""

    @abc.abstractmethod
    def is_cancel_requested(self, request_id: str) -> bool: ...

    @abc.abstractmethod
    def set_progress(self, request_id: str, step: int, total: int, stage: str) -> None: ...

    @abc.abstractmethod
    def release_worker_jobs(self, worker_id: str, reason: str, max_attempts: int) -> list[str]:
        """The worker is gone: each IN_PROGRESS job it held is handled as `lifecycle.release_decision` says (back to
        the queue, or completed saying `reason`), and the worker's heartbeat row is removed. Returns the affected
        request ids."""

    @abc.abstractmethod
    def held_jobs(self, worker_id: str) -> list[str]:
        """The IN_PROGRESS request ids the store says this worker holds."""

    @abc.abstractmethod
    def release_job(self, request_id: str, worker_id: str, reason: str, max_attempts: int) -> bool:
        """One job this worker is recorded as holding but does not run (the store lost its completion, e.g. in a
        Redis crash): handled as `lifecycle.release_decision` says. False if that worker does not hold it."""

    @abc.abstractmethod
    def in_progress_workers(self) -> list[str]:
        """Worker ids that hold IN_PROGRESS jobs (to find jobs of workers that are gone)."""

    @abc.abstractmethod
    def expire_start_deadlines(self, now: float | None = None) -> list[str]:
        """Complete queued jobs whose start deadline passed with error_type 'request_timeout'."""

    # --- logs -----------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def append_log(self, request_id: str, message: str, level: str = "INFO") -> None: ...

    @abc.abstractmethod
    def logs(self, request_id: str) -> list[LogEntry]: ...

    # --- files ----------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_file(self, f: StoredFile) -> None: ...

    @abc.abstractmethod
    def get_file(self, file_id: str) -> StoredFile | None: ...

    @abc.abstractmethod
    def mark_file_complete(self, file_id: str, file_size: int) -> None: ...

    # --- webhooks -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def due_webhooks(self, now: float | None = None, limit: int = 20) -> list[WebhookDelivery]: ...

    @abc.abstractmethod
    def record_webhook_attempt(
        self, request_id: str, *, ok: bool, error: str | None, next_attempt_at: float | None
    ) -> None:
        """After one delivery attempt: delivered, rescheduled at next_attempt_at, or given up (None)."""

    @abc.abstractmethod
    def webhook(self, request_id: str) -> WebhookDelivery | None: ...

    # --- housekeeping and metrics ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def purge_expired(self, now: float | None = None) -> list[StoredFile]:
        """Delete expired completed jobs and files; returns the deleted files so their bytes can be removed."""

    @abc.abstractmethod
    def counts(self) -> StoreCounts: ...

    @abc.abstractmethod
    def inference_times(self) -> list[float]:
        """Seconds spent on each completed job still retained (for the generation-time histogram)."""

    def generation_histogram(self) -> "GenerationHistogram":
        """The generation-time histogram as Prometheus needs it: counts that only grow. A backend overrides this by
        observing each completion; this fallback rebuilds it from retained jobs (its counts drop when jobs expire)."""
        return GenerationHistogram.of(self.inference_times())

    # --- workers --------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def heartbeat(self, worker_id: str, *, ready: bool, info: dict[str, Any] | None = None) -> None:
        """A worker says it is alive (and whether its model is loaded)."""

    @abc.abstractmethod
    def live_workers(self, max_age_seconds: float) -> list[dict[str, Any]]:
        """Workers that sent a heartbeat recently: [{"worker_id", "ready", "info", "seen_at"}]."""

    @abc.abstractmethod
    def close(self) -> None: ...
