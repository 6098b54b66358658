"""The job lifecycle's rules, decided once here and applied by every store backend inside its own transaction."""

from __future__ import annotations

from dataclasses import dataclass

from ltxserve.jobs.outcome import Outcome, OutcomeKind


def final_outcome(outcome: Outcome, cancel_requested: bool) -> Outcome:
    """What a job completes with: a cancel already answered 202 wins over whatever the worker finished with
    (the store checks the flag in the same transaction as the completion, so the two can never both succeed)."""
    if cancel_requested and outcome.kind is not OutcomeKind.CANCELLED:
        return Outcome.cancelled(inference_time=outcome.inference_time)
    return outcome


@dataclass(frozen=True)
class ReleaseDecision:
    """What happens to an IN_PROGRESS job whose worker is gone."""

    retry: bool  # back to IN_QUEUE (keeps its place by submission order)
    outcome: Outcome | None  # when not retried: what it completes with
    log_message: str  # appended to the job's logs
    log_level: str


def release_decision(attempts: int, max_attempts: int, cancel_requested: bool, reason: str) -> ReleaseDecision:
    """Retry while attempts < max_attempts (once by default), then fail saying why; a cancelled job just ends."""
    if cancel_requested:
        return ReleaseDecision(False, Outcome.cancelled(), f"{reason}; the request had been cancelled", "WARN")
    if attempts < max_attempts:
        return ReleaseDecision(True, None, f"{reason}; retrying (attempt {attempts + 1})", "WARN")
    message = f"{reason}; gave up after {attempts} attempts"
    return ReleaseDecision(False, Outcome.runner_lost(message), message, "ERROR")


def expires_at(now: float, retention_seconds: int | None, default_retention_seconds: int) -> float:
    """When a completed job (and its output files) expire: its own retention (X-Fal-Object-Lifecycle-Preference)
    or the server's default."""
    return now + (default_retention_seconds if retention_seconds is None else retention_seconds)
