"""The JobStore contract: every backend (tests/jobs/conftest.py: STORE_FACTORIES) must pass all of it.

State machine, queue order, claims racing, every Outcome kind, cancellation, worker loss, deadlines, logs, progress,
files, webhooks, retention, counts, the generation histogram and worker heartbeats, all through the interface only.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import threading
import time

import pytest

from ltxserve.jobs.outcome import Outcome, OutcomeKind
from ltxserve.jobs.store import Job, StoredFile
from ltxserve.jobs.webhooks import webhook_body
from ltxserve.protocol import Priority, QueueState
from tests.jobs.conftest import EP, RETENTION_SECONDS, make_job, open_store, store_address

def running(store, worker_id: str = "w1", **kw) -> Job:
    job = store.submit(make_job(**kw))
    claimed = store.claim_next(worker_id, [EP])
    assert claimed.request_id == job.request_id
    return claimed


def file_record(file_id: str, **kw) -> StoredFile:
    return StoredFile(file_id=file_id, path=f"{file_id}/{kw.pop('file_name', 'a.mp4')}",
                      content_type=kw.pop("content_type", "video/mp4"), file_name="a.mp4",
                      file_size=kw.pop("file_size", 3), created_at=kw.pop("created_at", time.time()), **kw)


# --- submit, get, status view, queue order ------------------------------------------------------------------------

def test_submit_and_get_keep_every_field(store):
    deadline = time.time() + 30
    job = store.submit(make_job(Priority.LOW, input={"prompt": "é", "n": [1, 2]}, webhook_url="http://h/x",
                                start_deadline=deadline, retention_seconds=7, sync=True))
    assert job.created_at > 0 and job.state == QueueState.IN_QUEUE
    got = store.get(job.request_id)
    assert (got.endpoint_id, got.owner, got.app, got.input) == (EP, "test", "app", {"prompt": "é", "n": [1, 2]})
    assert got.priority == Priority.LOW and got.webhook_url == "http://h/x" and got.sync
    assert got.start_deadline == pytest.approx(deadline) and got.retention_seconds == 7
    assert got.state == QueueState.IN_QUEUE and got.attempts == 0 and got.worker_id is None
    assert got.created_at == pytest.approx(job.created_at)
    assert got.result is None and got.error is None and not got.cancel_requested
    assert store.get("missing") is None and store.status_view("missing") is None


def test_order_normal_before_low_then_fifo_and_queue_position(store):
    low1 = store.submit(make_job(Priority.LOW))
    n1 = store.submit(make_job())
    low2 = store.submit(make_job(Priority.LOW))
    n2 = store.submit(make_job())
    expected = [n1, n2, low1, low2]
    for i, j in enumerate(expected):
        assert store.queue_position(j.request_id) == i
        view = store.status_view(j.request_id)
        assert view.progress == {"queue_position": i} and view.state == QueueState.IN_QUEUE
    claimed = [store.claim_next("w", [EP]).request_id for _ in expected]
    assert claimed == [j.request_id for j in expected]
    assert store.queue_position(n1.request_id) == 0
    view = store.status_view(n1.request_id)
    assert view.state == QueueState.IN_PROGRESS and view.progress is None


def test_status_view_of_a_completed_job(store):
    job = running(store)
    store.complete(job.request_id, Outcome.failed("boom", "internal_error", {"detail": "boom"}, 500, 1.25))
    view = store.status_view(job.request_id)
    assert (view.state, view.error, view.error_type) == (QueueState.COMPLETED, "boom", "internal_error")
    assert view.inference_time == pytest.approx(1.25) and view.progress is None


# --- claims -------------------------------------------------------------------------------------------------------

def test_claim_moves_to_in_progress_for_that_worker_only_for_its_endpoints(store):
    other = store.submit(make_job(endpoint_id="other/app"))
    job = store.submit(make_job())
    assert store.claim_next("w1", []) is None
    claimed = store.claim_next("w1", [EP])
    assert claimed.request_id == job.request_id and claimed.state == QueueState.IN_PROGRESS
    assert claimed.attempts == 1 and claimed.worker_id == "w1" and claimed.input == {"x": 1}
    got = store.get(job.request_id)
    assert got.state == QueueState.IN_PROGRESS and got.worker_id == "w1" and got.started_at is not None
    assert store.claim_next("w1", [EP]) is None
    assert store.claim_next("w2", ["other/app", EP]).request_id == other.request_id
    assert sorted(store.in_progress_workers()) == ["w1", "w2"]


def test_two_claimers_racing_never_get_the_same_job(store):
    rounds = 25
    ids = {store.submit(make_job()).request_id for _ in range(2 * rounds)}
    barrier = threading.Barrier(2)
    results: dict[str, list] = {}

    def claimer(worker_id: str) -> None:
        store.queue_position("warm-up")  # open this thread's connection before the start line
        got = []
        for _ in range(rounds):
            barrier.wait(30)  # both claim at the same moment, every round
            job = store.claim_next(worker_id, [EP])
            got.append(job.request_id if job else None)
        results[worker_id] = got

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) == {"w0", "w1"}
    claimed = results["w0"] + results["w1"]
    assert None not in claimed  # one job each per round
    assert len(claimed) == len(set(claimed)) == len(ids) and set(claimed) == ids
    owners = {rid: store.get(rid).worker_id for rid in ids}
    assert all(owners[rid] == w for w, got in results.items() for rid in got)


def _claim_in_rounds(address: tuple[str, str], worker_id: str, barrier, rounds: int, out) -> None:
    s = open_store(address)  # a worker process of its own, as in production
    s.queue_position("warm-up")  # connected before the start line
    got = []
    for _ in range(rounds):
        barrier.wait(60)  # every process claims at the same moment, every round: real contention each time
        job = s.claim_next(worker_id, [EP])
        got.append(job.request_id if job else None)
    barrier.wait(60)
    got.append(s.claim_next(worker_id, [EP]))  # the queue is empty now for everyone
    out.put((worker_id, got))


def test_claimers_in_separate_processes_never_get_the_same_job(store):
    workers, rounds = 3, 20
    ids = {store.submit(make_job()).request_id for _ in range(workers * rounds)}
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_claim_in_rounds, args=(store_address(store), f"w{i}", barrier, rounds, out))
             for i in range(workers)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    for got in results.values():
        assert got[-1] is None and None not in got[:-1]  # one job per process per round, then none left
    claimed = [rid for got in results.values() for rid in got[:-1]]
    assert len(claimed) == len(set(claimed)) == len(ids) and set(claimed) == ids
    assert store.counts().in_progress == len(ids) and store.counts().in_queue == 0


# --- completion with each outcome ---------------------------------------------------------------------------------

OUTCOMES = [
    Outcome.ok({"video": {"url": "http://x/v.mp4"}}, inference_time=2.5),
    Outcome.failed("Input validation failed", "validation_error",
                   {"detail": [{"loc": ["body", "x"], "msg": "bad", "type": "value_error"}]}, 422, 0.5),
    Outcome.cancelled(inference_time=1.0),
    Outcome.timed_out(),
    Outcome.runner_lost("worker died; gave up after 2 attempts"),
]


@pytest.mark.parametrize("outcome", OUTCOMES, ids=lambda o: o.kind.value)
def test_complete_stores_the_outcome_exactly(store, outcome):
    job = running(store)
    assert store.complete(job.request_id, outcome)
    done = store.get(job.request_id)
    assert done.state == QueueState.COMPLETED and done.completed_at is not None
    assert (done.result, done.error, done.error_type, done.error_body, done.status_code) == (
        outcome.result, outcome.error, outcome.error_type, outcome.error_body, outcome.status_code)
    assert done.inference_time == (None if outcome.inference_time is None else pytest.approx(outcome.inference_time))
    assert done.expires_at == pytest.approx(done.completed_at + RETENTION_SECONDS)
    # Completing twice is refused and changes nothing; unknown ids are refused.
    assert not store.complete(job.request_id, Outcome.failed("again", "internal_error", None, 500))
    assert store.get(job.request_id).error == outcome.error
    assert not store.complete("missing", Outcome.ok({}))
    assert store.claim_next("w1", [EP]) is None


def test_a_queued_job_can_be_completed_and_keeps_its_own_retention(store):
    job = store.submit(make_job(retention_seconds=5))
    assert store.complete(job.request_id, Outcome.failed("no runner", "runner_scheduling_failure", None, 503))
    done = store.get(job.request_id)
    assert done.state == QueueState.COMPLETED and done.expires_at == pytest.approx(done.completed_at + 5)


# --- cancellation -------------------------------------------------------------------------------------------------

def test_cancel_queued_completes_at_once(store):
    job = store.submit(make_job())
    assert store.request_cancel(job.request_id) == "CANCELLATION_REQUESTED"
    done = store.get(job.request_id)
    assert done.state == QueueState.COMPLETED and done.error_type == "request_cancelled" and done.status_code == 400
    assert store.request_cancel(job.request_id) == "ALREADY_COMPLETED"
    assert store.request_cancel("missing") == "NOT_FOUND"
    assert store.claim_next("w", [EP]) is None


def test_cancel_running_sets_the_flag_only(store):
    job = running(store)
    assert not store.is_cancel_requested(job.request_id)
    assert store.request_cancel(job.request_id) == "CANCELLATION_REQUESTED"
    assert store.is_cancel_requested(job.request_id)
    got = store.get(job.request_id)
    assert got.state == QueueState.IN_PROGRESS and got.cancel_requested
    assert not store.is_cancel_requested("missing")


def test_cancel_of_a_completed_job_changes_nothing(store):
    job = running(store)
    store.complete(job.request_id, Outcome.ok({"v": 1}))
    assert store.request_cancel(job.request_id) == "ALREADY_COMPLETED"
    done = store.get(job.request_id)
    assert done.result == {"v": 1} and done.error is None and not store.is_cancel_requested(job.request_id)


def test_a_granted_cancel_wins_over_a_late_ok(store):
    job = running(store, webhook_url="http://127.0.0.1:9/hook")
    assert store.request_cancel(job.request_id) == "CANCELLATION_REQUESTED"
    assert store.complete(job.request_id, Outcome.ok({"video": "made anyway"}, inference_time=3.0))
    done = store.get(job.request_id)
    assert done.result is None and done.error_type == "request_cancelled" and done.status_code == 400
    assert done.inference_time == pytest.approx(3.0)
    assert json.loads(store.webhook(job.request_id).body)["status"] == "ERROR"


# --- worker loss --------------------------------------------------------------------------------------------------

def test_release_worker_jobs_retries_once_then_fails(store):
    job = running(store, "w1")
    store.set_progress(job.request_id, 2, 10, "pass 1")
    store.heartbeat("w1", ready=True)
    assert store.in_progress_workers() == ["w1"]
    assert store.release_worker_jobs("w1", "worker died", max_attempts=2) == [job.request_id]
    back = store.get(job.request_id)
    assert back.state == QueueState.IN_QUEUE and back.worker_id is None and back.progress is None
    assert store.in_progress_workers() == [] and store.live_workers(60) == []  # the heartbeat row is gone
    assert store.queue_position(job.request_id) == 0
    again = store.claim_next("w2", [EP])
    assert again.request_id == job.request_id and again.attempts == 2
    assert store.release_worker_jobs("w2", "worker died again", max_attempts=2) == [job.request_id]
    done = store.get(job.request_id)
    assert done.state == QueueState.COMPLETED and done.error_type == "runner_disconnected"
    assert done.status_code == 503 and done.error == "worker died again; gave up after 2 attempts"
    assert done.error_body == {"detail": done.error, "error_type": "runner_disconnected"}
    messages = [(e.level, e.message) for e in store.logs(job.request_id)]
    assert messages == [("WARN", "worker died; retrying (attempt 2)"), ("ERROR", done.error)]
    assert store.release_worker_jobs("w2", "twice", max_attempts=2) == []


def test_released_job_keeps_its_place_by_submission_order(store):
    first = running(store, "w1")
    later = store.submit(make_job())
    store.release_worker_jobs("w1", "worker died", max_attempts=2)
    assert store.claim_next("w2", [EP]).request_id == first.request_id
    assert store.queue_position(later.request_id) == 0


def test_a_worker_taken_for_lost_cannot_complete_the_job_it_no_longer_holds(store):
    job = running(store, "w1")
    store.release_worker_jobs("w1", "no heartbeat", max_attempts=2)  # w1 was only slow, and goes on
    assert not store.complete(job.request_id, Outcome.ok({"from": "w1"}), worker_id="w1")  # back in the queue
    assert store.get(job.request_id).state == QueueState.IN_QUEUE
    assert store.claim_next("w2", [EP]).request_id == job.request_id
    assert not store.complete(job.request_id, Outcome.ok({"from": "w1"}), worker_id="w1")  # now w2's
    assert store.get(job.request_id).state == QueueState.IN_PROGRESS
    assert store.complete(job.request_id, Outcome.ok({"from": "w2"}), worker_id="w2")
    assert store.get(job.request_id).result == {"from": "w2"}


def test_the_holder_completes_with_a_granted_cancel_winning(store):
    job = running(store, "w1")
    store.request_cancel(job.request_id)
    assert store.complete(job.request_id, Outcome.ok({"late": True}), worker_id="w1")
    assert store.get(job.request_id).error_type == "request_cancelled"


def test_held_jobs_and_releasing_one_job_a_live_worker_does_not_run(store):
    first, second = running(store, "w1"), running(store, "w1")
    other = running(store, "w2")
    assert sorted(store.held_jobs("w1")) == sorted([first.request_id, second.request_id])
    store.heartbeat("w1", ready=True)
    assert not store.release_job(other.request_id, "w1", "not running it", max_attempts=2)  # w2's, not w1's
    assert store.release_job(first.request_id, "w1", "not running it", max_attempts=2)
    assert store.get(first.request_id).state == QueueState.IN_QUEUE
    assert store.held_jobs("w1") == [second.request_id]
    assert [w["worker_id"] for w in store.live_workers(60)] == ["w1"]  # the worker itself is not forgotten
    assert not store.release_job(first.request_id, "w1", "again", max_attempts=2)  # no longer held


def test_a_cancelled_job_of_a_lost_worker_ends_cancelled(store):
    job = running(store, "w1")
    store.request_cancel(job.request_id)
    assert store.release_worker_jobs("w1", "worker died", max_attempts=2) == [job.request_id]
    done = store.get(job.request_id)
    assert done.state == QueueState.COMPLETED and done.error_type == "request_cancelled"


# --- start deadlines ----------------------------------------------------------------------------------------------

def test_start_deadline_completes_with_request_timeout(store):
    late = store.submit(make_job(start_deadline=time.time() - 1))
    fresh = store.submit(make_job(start_deadline=time.time() + 60))
    # A claim skips (and times out) the late job.
    assert store.claim_next("w", [EP]).request_id == fresh.request_id
    job = store.get(late.request_id)
    assert job.state == QueueState.COMPLETED and job.error_type == "request_timeout" and job.status_code == 504
    assert job.error_body == {"detail": "Request timed out", "error_type": "request_timeout"}
    # Housekeeping finds late jobs without a claim; running and deadline-free jobs are left alone.
    other = store.submit(make_job(start_deadline=time.time() + 5))
    free = store.submit(make_job())
    assert store.expire_start_deadlines(now=time.time() + 10) == [other.request_id]
    assert store.get(other.request_id).error_type == "request_timeout"
    assert store.get(fresh.request_id).state == QueueState.IN_PROGRESS
    assert store.get(free.request_id).state == QueueState.IN_QUEUE


# --- logs and progress --------------------------------------------------------------------------------------------

def test_logs_keep_their_order_with_utc_z_timestamps(store):
    job = store.submit(make_job())
    other = store.submit(make_job())
    for i in range(12):
        store.append_log(job.request_id, f"line {i}", "DEBUG" if i % 2 else "INFO")
    store.append_log(other.request_id, "elsewhere")
    entries = store.logs(job.request_id)
    assert [e.message for e in entries] == [f"line {i}" for i in range(12)]
    assert [e.level for e in entries[:2]] == ["INFO", "DEBUG"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e.timestamp) for e in entries)
    assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)
    assert store.logs("missing") == []


def test_progress_is_kept_and_cleared_by_a_new_claim(store):
    job = running(store)
    store.set_progress(job.request_id, 3, 10, "pass 1")
    assert store.get(job.request_id).progress == {"step": 3, "total": 10, "stage": "pass 1"}
    store.set_progress(job.request_id, 4, 10, "pass 2")
    assert store.get(job.request_id).progress == {"step": 4, "total": 10, "stage": "pass 2"}
    store.release_worker_jobs("w1", "gone", max_attempts=2)
    store.claim_next("w2", [EP])
    assert store.get(job.request_id).progress is None


# --- files --------------------------------------------------------------------------------------------------------

def test_files_add_get_and_complete(store):
    upload = file_record("a" * 32, file_size=0, complete=False, expires_at=time.time() + 60)
    store.add_file(upload)
    got = store.get_file(upload.file_id)
    assert got == upload and not got.complete
    store.mark_file_complete(upload.file_id, 1234)
    got = store.get_file(upload.file_id)
    assert got.complete and got.file_size == 1234 and got.path == upload.path
    job = running(store)
    output = file_record("b" * 32, request_id=job.request_id)
    store.add_file(output)
    assert store.get_file(output.file_id) == output
    assert store.get_file("c" * 32) is None


# --- webhooks -----------------------------------------------------------------------------------------------------

def test_completion_enqueues_fals_webhook_payload(store):
    ok = running(store, webhook_url="http://127.0.0.1:9/hook")
    store.complete(ok.request_id, Outcome.ok({"video": 1}))
    bad = running(store, webhook_url="http://127.0.0.1:9/other")
    store.complete(bad.request_id, Outcome.failed("boom", "internal_error", {"detail": "boom"}, 500))
    none = running(store)
    store.complete(none.request_id, Outcome.ok({}))
    assert store.webhook(none.request_id) is None
    hook = store.webhook(ok.request_id)
    assert hook.url == "http://127.0.0.1:9/hook" and hook.attempts == 0 and hook.delivered_at is None
    assert hook.body == webhook_body(store.get(ok.request_id))
    body_ok = json.loads(hook.body)
    assert body_ok["request_id"] == ok.request_id and body_ok["status"] == "OK"
    assert body_ok["payload"] == {"video": 1} and "error" not in body_ok
    body_bad = json.loads(store.webhook(bad.request_id).body)
    assert body_bad["status"] == "ERROR" and body_bad["payload"] == {"detail": "boom"}
    assert body_bad["error"] == "Invalid status code: 500"


def test_webhook_attempts_deliver_reschedule_and_give_up(store):
    rids = []
    for _ in range(3):
        job = running(store, webhook_url="http://127.0.0.1:9/hook")
        store.complete(job.request_id, Outcome.ok({}))
        rids.append(job.request_id)
    a, b, c = rids
    now = time.time()
    assert {d.request_id for d in store.due_webhooks(now=now + 1)} == set(rids)
    assert len(store.due_webhooks(now=now + 1, limit=2)) == 2
    assert store.due_webhooks(now=now - 60) == []  # not due before they were enqueued
    store.record_webhook_attempt(a, ok=True, error=None, next_attempt_at=None)
    store.record_webhook_attempt(b, ok=False, error="HTTP 500", next_attempt_at=now + 60)
    store.record_webhook_attempt(c, ok=False, error="refused", next_attempt_at=None)
    assert store.due_webhooks(now=now + 1) == []
    assert [d.request_id for d in store.due_webhooks(now=now + 61)] == [b]
    wa, wb, wc = (store.webhook(r) for r in rids)
    assert wa.delivered_at is not None and wa.attempts == 1 and wa.last_error is None and not wa.gave_up
    assert wb.delivered_at is None and wb.attempts == 1 and wb.last_error == "HTTP 500"
    assert wb.next_attempt_at == pytest.approx(now + 60)
    assert wc.gave_up and wc.last_error == "refused" and wc.attempts == 1
    assert store.webhook("missing") is None


# --- retention ----------------------------------------------------------------------------------------------------

def test_purge_removes_expired_jobs_with_their_logs_webhooks_and_output_files(store):
    short = running(store, retention_seconds=10, webhook_url="http://127.0.0.1:9/")
    store.append_log(short.request_id, "hello")
    store.add_file(file_record("1" * 32, request_id=short.request_id))
    default = running(store)
    store.add_file(file_record("2" * 32, request_id=default.request_id))
    now = time.time()
    store.add_file(file_record("3" * 32, created_at=now, expires_at=now + 10))  # an upload
    store.add_file(file_record("4" * 32, created_at=now, expires_at=now + 10, complete=False))  # never PUT
    queued = store.submit(make_job())
    store.complete(short.request_id, Outcome.ok({}))
    store.complete(default.request_id, Outcome.ok({}))
    assert store.purge_expired(now=now) == []
    purged = store.purge_expired(now=now + 50)
    assert sorted(f.file_id for f in purged) == ["1" * 32, "3" * 32, "4" * 32]
    assert all(f.path.startswith(f.file_id + "/") for f in purged)  # enough to delete the bytes
    assert store.get(short.request_id) is None
    assert store.logs(short.request_id) == [] and store.webhook(short.request_id) is None
    assert all(store.get_file(i * 32) is None for i in "134")
    assert store.get(default.request_id) is not None and store.get_file("2" * 32) is not None
    assert store.purge_expired(now=now + 50) == []
    assert [f.file_id for f in store.purge_expired(now=now + 200)] == ["2" * 32]
    assert store.get(default.request_id) is None
    assert store.get(queued.request_id).state == QueueState.IN_QUEUE  # only completed jobs expire


# --- counts and metrics -------------------------------------------------------------------------------------------

def test_counts(store):
    assert store.counts().in_queue == 0
    ok, bad = running(store), running(store)
    running(store)
    store.complete(ok.request_id, Outcome.ok({}))
    store.complete(bad.request_id, Outcome.cancelled())
    store.submit(make_job())
    store.submit(make_job())
    c = store.counts()
    assert (c.in_queue, c.in_progress, c.completed_ok, c.completed_error) == (2, 1, 1, 1)


def _finish(store, seconds: float) -> None:
    job = running(store, retention_seconds=10)
    store.complete(job.request_id, Outcome.ok({}, inference_time=seconds))


def test_generation_histogram_only_grows(store):
    for seconds in (0.2, 3.0, 3.5, 45.0, 5000.0):
        _finish(store, seconds)
    assert sorted(store.inference_times()) == pytest.approx([0.2, 3.0, 3.5, 45.0, 5000.0])
    before = store.generation_histogram()
    assert before.count == 5 and before.total_seconds == pytest.approx(5051.7)
    buckets = dict(before.buckets)
    assert (buckets[0.5], buckets[5], buckets[60], buckets[1800]) == (1, 3, 4, 4)  # 5000 s only in +Inf
    store.purge_expired(now=time.time() + 3600)  # every job it counted is gone
    assert store.inference_times() == []
    assert store.generation_histogram() == before
    _finish(store, 1.0)
    after = store.generation_histogram()
    assert after.count == 6 and dict(after.buckets)[1] == 2
    cancelled = store.submit(make_job())
    store.request_cancel(cancelled.request_id)  # no inference time: not observed
    assert store.generation_histogram().count == 6


# --- workers ------------------------------------------------------------------------------------------------------

def test_heartbeats_and_live_workers(store):
    store.heartbeat("w1", ready=False, info={"pid": 1})
    store.heartbeat("w1", ready=True)  # no info: the last one is kept
    store.heartbeat("w2", ready=False, info={"pid": 2, "startup_error": "x"})
    workers = {w["worker_id"]: w for w in store.live_workers(60)}
    assert set(workers) == {"w1", "w2"}
    assert workers["w1"]["ready"] and workers["w1"]["info"] == {"pid": 1}
    assert not workers["w2"]["ready"] and workers["w2"]["info"]["startup_error"] == "x"
    assert workers["w1"]["seen_at"] == pytest.approx(time.time(), abs=30)
    assert store.live_workers(-1) == []
    store.release_worker_jobs("w2", "gone", max_attempts=2)
    assert [w["worker_id"] for w in store.live_workers(60)] == ["w1"]


def test_outcome_kinds_are_all_covered():
    assert {o.kind for o in OUTCOMES} == set(OutcomeKind)
