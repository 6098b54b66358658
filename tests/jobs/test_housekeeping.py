"""Housekeeping on any store backend: the lost-worker reaper (heartbeat age), deadlines and retention with the files'
bytes deleted through the storage."""

from __future__ import annotations

import time
import uuid

from ltxserve.jobs.housekeeping import Housekeeper, reap_lost_workers
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.store import Job
from ltxserve.protocol import QueueState
from ltxserve.storage import LocalFolderStorage

EP = "test/app/run"


def run_on(store, worker_id: str, **kw) -> str:
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id=EP, owner="t", app="a", input={}, **kw))
    assert store.claim_next(worker_id, [EP]).request_id == rid
    return rid


def test_reaper_releases_only_workers_whose_heartbeat_stopped(store):
    alive, silent, never = run_on(store, "alive"), run_on(store, "silent"), run_on(store, "never")
    kept = run_on(store, "kept")
    store.heartbeat("alive", ready=True)
    store.heartbeat("silent", ready=True)
    time.sleep(0.3)  # "silent" and the others are now older than the 0.2 s limit...
    store.heartbeat("alive", ready=True)  # ...and "alive" is not
    released = reap_lost_workers(store, lost_after_seconds=0.2, max_attempts=2, keep=["kept"])
    assert released == {"silent": [silent], "never": [never]}
    assert store.get(alive).state == QueueState.IN_PROGRESS and store.get(kept).state == QueueState.IN_PROGRESS
    for rid in (silent, never):
        job = store.get(rid)
        assert job.state == QueueState.IN_QUEUE
        assert any("worker lost" in e.message and "retrying" in e.message for e in store.logs(rid))
    assert reap_lost_workers(store, lost_after_seconds=0.2, max_attempts=2, keep=["kept"]) == {}


def test_housekeeping_pass_times_out_purges_bytes_and_reaps(store, tmp_path):
    storage = LocalFolderStorage(tmp_path / "files", "http://127.0.0.1:1")
    rid = run_on(store, "gone", retention_seconds=1)
    out = storage.save(b"video", "out.mp4", "video/mp4", request_id=rid)
    store.add_file(out)
    store.complete(rid, Outcome.ok({"video": storage.url_for(out)}))
    lost = run_on(store, "lost-worker")
    late = uuid.uuid4().hex
    store.submit(Job(request_id=late, endpoint_id=EP, owner="t", app="a", input={}, start_deadline=time.time() + 1))
    keeper = Housekeeper(store, storage.delete, lost_after_seconds=30, max_attempts=2)
    keeper.run_once(now=time.time() + 5)
    assert store.get(rid) is None and storage.path_for(out) is None and store.get_file(out.file_id) is None
    assert store.get(late).error_type == "request_timeout"
    assert store.get(lost).state == QueueState.IN_QUEUE  # no heartbeat ever: reaped
