"""The SQLite job store: state machine, queue order, deadlines, cancel, retention, webhook rows, concurrent claims."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import time
import uuid
from pathlib import Path

import pytest

from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job, StoredFile
from ltxserve.protocol import Priority, QueueState

EP = "test/app/run"


def make_job(priority: Priority = Priority.NORMAL, **kw) -> Job:
    return Job(request_id=kw.pop("request_id", uuid.uuid4().hex), endpoint_id=EP, owner="test", app="app",
               input={"x": 1}, priority=priority, **kw)


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    s = SqliteJobStore(tmp_path / "jobs.sqlite3", default_retention_seconds=100)
    yield s
    s.close()


def test_lifecycle_queue_progress_complete(store):
    job = store.submit(make_job())
    assert store.get(job.request_id).state == QueueState.IN_QUEUE
    claimed = store.claim_next("w1", [EP])
    assert claimed.request_id == job.request_id and claimed.state == QueueState.IN_PROGRESS
    assert claimed.attempts == 1 and store.get(job.request_id).worker_id == "w1"
    store.set_progress(job.request_id, 3, 10, "pass 1")
    assert store.get(job.request_id).progress == {"step": 3, "total": 10, "stage": "pass 1"}
    assert store.complete(job.request_id, Outcome.ok({"ok": True}, inference_time=1.5))
    done = store.get(job.request_id)
    assert done.state == QueueState.COMPLETED and done.result == {"ok": True} and done.error is None
    assert done.expires_at == pytest.approx(done.completed_at + 100)
    # Completing twice is refused; nothing is left to claim.
    assert not store.complete(job.request_id, Outcome.failed("again", "internal_error", None, 500))
    assert store.claim_next("w1", [EP]) is None
    assert store.claim_next("w1", ["other/endpoint"]) is None


def test_order_normal_before_low_then_fifo_and_queue_position(store):
    low1 = store.submit(make_job(Priority.LOW))
    n1 = store.submit(make_job())
    low2 = store.submit(make_job(Priority.LOW))
    n2 = store.submit(make_job())
    expected = [n1, n2, low1, low2]
    for i, j in enumerate(expected):
        assert store.queue_position(j.request_id) == i
        assert store.status_view(j.request_id).progress == {"queue_position": i}
    claimed = [store.claim_next("w", [EP]).request_id for _ in expected]
    assert claimed == [j.request_id for j in expected]
    assert store.queue_position(n1.request_id) == 0
    assert store.status_view(n1.request_id).progress is None


def test_start_deadline_completes_with_request_timeout(store):
    late = store.submit(make_job(start_deadline=time.time() - 1))
    fresh = store.submit(make_job(start_deadline=time.time() + 60))
    # The claim skips (and times out) the late job.
    assert store.claim_next("w", [EP]).request_id == fresh.request_id
    job = store.get(late.request_id)
    assert job.state == QueueState.COMPLETED and job.error_type == "request_timeout" and job.status_code == 504
    assert job.error_body == {"detail": "Request timed out", "error_type": "request_timeout"}
    # And housekeeping finds late jobs without a claim.
    other = store.submit(make_job(start_deadline=time.time() + 5))
    assert store.expire_start_deadlines(now=time.time() + 10) == [other.request_id]
    assert store.get(other.request_id).error_type == "request_timeout"


def test_cancel_queued_completes_at_once(store):
    job = store.submit(make_job())
    assert store.request_cancel(job.request_id) == "CANCELLATION_REQUESTED"
    done = store.get(job.request_id)
    assert done.state == QueueState.COMPLETED and done.error_type == "request_cancelled"
    assert store.request_cancel(job.request_id) == "ALREADY_COMPLETED"
    assert store.request_cancel("missing") == "NOT_FOUND"
    assert store.claim_next("w", [EP]) is None


def test_cancel_running_sets_flag(store):
    job = store.submit(make_job())
    store.claim_next("w", [EP])
    assert not store.is_cancel_requested(job.request_id)
    assert store.request_cancel(job.request_id) == "CANCELLATION_REQUESTED"
    assert store.is_cancel_requested(job.request_id)
    assert store.get(job.request_id).state == QueueState.IN_PROGRESS


def test_release_worker_jobs_retries_then_fails(store):
    job = store.submit(make_job())
    store.claim_next("w1", [EP])
    assert store.in_progress_workers() == ["w1"]
    assert store.release_worker_jobs("w1", "worker died", max_attempts=2) == [job.request_id]
    assert store.get(job.request_id).state == QueueState.IN_QUEUE
    assert store.claim_next("w2", [EP]).attempts == 2
    store.release_worker_jobs("w2", "worker died again", max_attempts=2)
    done = store.get(job.request_id)
    assert done.state == QueueState.COMPLETED and done.error_type == "runner_disconnected"
    assert "worker died again" in done.error
    assert any("retrying" in entry.message for entry in store.logs(job.request_id))


def test_logs_are_ordered_with_utc_z_timestamps(store):
    job = store.submit(make_job())
    for i in range(3):
        store.append_log(job.request_id, f"line {i}", "INFO")
    entries = store.logs(job.request_id)
    assert [e.message for e in entries] == ["line 0", "line 1", "line 2"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e.timestamp) for e in entries)


def test_webhook_row_on_success_and_error(store):
    ok = store.submit(make_job(webhook_url="http://127.0.0.1:9/hook"))
    bad = store.submit(make_job(webhook_url="http://127.0.0.1:9/hook"))
    none = store.submit(make_job())
    store.complete(ok.request_id, Outcome.ok({"video": 1}))
    store.complete(bad.request_id, Outcome.failed("boom", "internal_error", {"detail": "boom"}, 500))
    store.complete(none.request_id, Outcome.ok({}))
    assert store.webhook(none.request_id) is None
    body_ok = json.loads(store.webhook(ok.request_id).body)
    assert body_ok["request_id"] == ok.request_id and body_ok["status"] == "OK"
    assert body_ok["payload"] == {"video": 1} and "error" not in body_ok
    body_bad = json.loads(store.webhook(bad.request_id).body)
    assert body_bad["status"] == "ERROR" and body_bad["payload"] == {"detail": "boom"} and body_bad["error"]
    due = {d.request_id for d in store.due_webhooks()}
    assert due == {ok.request_id, bad.request_id}
    store.record_webhook_attempt(ok.request_id, ok=True, error=None, next_attempt_at=None)
    store.record_webhook_attempt(bad.request_id, ok=False, error="HTTP 500", next_attempt_at=time.time() + 60)
    assert store.due_webhooks() == []
    assert store.webhook(ok.request_id).delivered_at is not None
    assert store.webhook(bad.request_id).attempts == 1


def test_retention_purges_jobs_logs_webhooks_and_files(store):
    keep_short = store.submit(make_job(retention_seconds=10, webhook_url="http://127.0.0.1:9/"))
    default = store.submit(make_job())
    store.append_log(keep_short.request_id, "hello")
    store.add_file(StoredFile(file_id="out1", path="out1/a.mp4", content_type="video/mp4", file_name="a.mp4",
                              file_size=3, created_at=time.time(), request_id=keep_short.request_id))
    now = time.time()
    store.add_file(StoredFile(file_id="up1", path="up1/b.png", content_type="image/png", file_name="b.png",
                              file_size=3, created_at=now, expires_at=now + 10))
    store.complete(keep_short.request_id, Outcome.ok({}))
    store.complete(default.request_id, Outcome.ok({}))
    assert store.purge_expired(now=now) == []
    purged = store.purge_expired(now=now + 50)
    assert {f.file_id for f in purged} == {"out1", "up1"}
    assert store.get(keep_short.request_id) is None
    assert store.logs(keep_short.request_id) == [] and store.webhook(keep_short.request_id) is None
    assert store.get_file("out1") is None and store.get_file("up1") is None
    assert store.get(default.request_id) is not None  # default retention is 100 s
    store.purge_expired(now=now + 200)
    assert store.get(default.request_id) is None


def test_heartbeats_and_live_workers(store):
    store.heartbeat("w1", ready=False, info={"pid": 1})
    store.heartbeat("w1", ready=True)
    [w] = store.live_workers(60)
    assert w["worker_id"] == "w1" and w["ready"] and w["info"] == {"pid": 1}
    assert store.live_workers(-1) == []


def _claim_in_rounds(path: str, worker_id: str, barrier, rounds: int, out) -> None:
    s = SqliteJobStore(Path(path))
    s.queue_position("warm-up")  # open the connection before the start line
    got = []
    for _ in range(rounds):
        barrier.wait(60)  # all processes claim at the same moment, every round: real contention each time
        job = s.claim_next(worker_id, [EP])
        got.append(job.request_id if job else None)
    barrier.wait(60)
    got.append(s.claim_next(worker_id, [EP]))  # the queue is empty now for everyone
    out.put((worker_id, got))


def test_concurrent_claims_from_processes_never_double_claim(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    workers, rounds = 3, 20
    ids = {store.submit(make_job()).request_id for _ in range(workers * rounds)}
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_claim_in_rounds, args=(str(path), f"w{i}", barrier, rounds, out))
             for i in range(workers)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    for got in results.values():
        assert got[-1] is None and None not in got[:-1]  # one job per process per round, then none left
    claimed = [rid for got in results.values() for rid in got[:-1]]
    assert len(claimed) == len(set(claimed)) == len(ids)  # 60 claims racing in threes, never one job twice
    assert set(claimed) == ids
