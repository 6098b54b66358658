"""The typed Outcome and the lifecycle rules every store backend applies (pure functions, table-driven)."""

from __future__ import annotations

import pytest

from ltxserve.jobs.lifecycle import expires_at, final_outcome, release_decision
from ltxserve.jobs.outcome import Outcome, OutcomeKind

ALL = [
    Outcome.ok({"video": {"url": "u"}}, inference_time=2.5),
    Outcome.failed("bad", "validation_error", {"detail": [{"loc": ["body", "x"], "msg": "m", "type": "t"}]}, 422),
    Outcome.cancelled(inference_time=1.0),
    Outcome.timed_out(),
    Outcome.runner_lost("worker died; gave up after 2 attempts"),
]


@pytest.mark.parametrize("outcome", ALL, ids=lambda o: o.kind.value)
def test_json_round_trip_is_exact(outcome):
    import json

    assert Outcome.from_json(json.loads(json.dumps(outcome.to_json()))) == outcome


def test_the_wire_values_of_each_kind():
    ok, failed, cancelled, timed_out, lost = ALL
    assert not ok.is_error and ok.error is None and ok.status_code == 200
    assert failed.is_error and failed.status_code == 422 and failed.error_body["detail"][0]["loc"] == ["body", "x"]
    assert (cancelled.error_type, cancelled.status_code, cancelled.error) == (
        "request_cancelled", 400, "Request was cancelled")
    assert cancelled.error_body == {"detail": "Request was cancelled", "error_type": "request_cancelled"}
    assert (timed_out.error_type, timed_out.status_code) == ("request_timeout", 504)
    assert timed_out.error_body == {"detail": "Request timed out", "error_type": "request_timeout"}
    assert (lost.kind, lost.error_type, lost.status_code) == (OutcomeKind.RUNNER_LOST, "runner_disconnected", 503)
    assert lost.error_body["detail"] == lost.error


def test_with_time_replaces_only_the_time():
    failed = ALL[1]
    timed = failed.with_time(7.0)
    assert timed.inference_time == 7.0 and timed.error_body == failed.error_body and failed.inference_time is None


@pytest.mark.parametrize("outcome", ALL, ids=lambda o: o.kind.value)
def test_a_granted_cancel_wins_over_what_the_worker_finished_with(outcome):
    final = final_outcome(outcome, cancel_requested=True)
    assert final.kind == OutcomeKind.CANCELLED and final.result is None
    assert final.inference_time == outcome.inference_time  # the time spent is still counted
    assert final_outcome(outcome, cancel_requested=False) is outcome


@pytest.mark.parametrize(
    "attempts, max_attempts, cancel, retry, kind, level",
    [
        (1, 2, False, True, None, "WARN"),
        (2, 2, False, False, OutcomeKind.RUNNER_LOST, "ERROR"),
        (3, 2, False, False, OutcomeKind.RUNNER_LOST, "ERROR"),
        (1, 2, True, False, OutcomeKind.CANCELLED, "WARN"),
    ],
)
def test_release_decision(attempts, max_attempts, cancel, retry, kind, level):
    d = release_decision(attempts, max_attempts, cancel, "worker died")
    assert d.retry is retry and d.log_level == level and d.log_message.startswith("worker died; ")
    assert (d.outcome.kind if d.outcome else None) == kind
    if kind == OutcomeKind.RUNNER_LOST:
        assert d.outcome.error == d.log_message == f"worker died; gave up after {attempts} attempts"
    if retry:
        assert d.log_message == f"worker died; retrying (attempt {attempts + 1})"


def test_expiry_uses_the_job_retention_else_the_default():
    assert expires_at(100.0, None, 50) == 150.0
    assert expires_at(100.0, 5, 50) == 105.0
    assert expires_at(100.0, 0, 50) == 100.0  # zero is a retention, not "unset"
