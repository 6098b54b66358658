"""The generation-time histogram is observed when each job completes, so its counts never drop when jobs expire
(Prometheus would read a drop as a counter reset), and /metrics serves it from the store."""

from __future__ import annotations

import time
import uuid

from fastapi.testclient import TestClient

from ltxserve.api.health import build_health_router
from ltxserve.config import Settings
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job


def _finish(store: SqliteJobStore, seconds: float, retention: int = 10) -> str:
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id="e", owner="o", app="a", input={}, retention_seconds=retention))
    assert store.claim_next("w", ["e"]).request_id == rid
    store.complete(rid, Outcome.ok({"ok": True}, inference_time=seconds))
    return rid


def test_counts_survive_the_expiry_of_the_jobs_they_counted(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    for seconds in (0.2, 3.0, 3.5, 45.0, 5000.0):
        _finish(store, seconds)
    before = store.generation_histogram()
    assert before.count == 5 and abs(before.total_seconds - 5051.7) < 1e-6
    buckets = dict(before.buckets)
    assert (buckets[0.5], buckets[5], buckets[60], buckets[1800]) == (1, 3, 4, 4)  # 5000 s is only in +Inf

    store.purge_expired(now=time.time() + 3600)  # every job and its row is gone
    assert store.inference_times() == []
    assert store.generation_histogram() == before
    _finish(store, 1.0)
    after = store.generation_histogram()
    assert after.count == 6 and dict(after.buckets)[1] == 2
    # A cancelled or timed-out job (no inference time) is not observed.
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id="e", owner="o", app="a", input={}))
    store.request_cancel(rid)
    assert store.generation_histogram().count == 6
    store.close()


def test_metrics_serve_the_observed_histogram(tmp_path):
    from fastapi import FastAPI

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    _finish(store, 2.5)
    _finish(store, 7.0)
    store.purge_expired(now=time.time() + 3600)
    app = FastAPI()
    app.include_router(build_health_router(Settings(data_dir=tmp_path), store, {"keys": []}))
    text = TestClient(app).get("/metrics").text
    assert 'ltxserve_generation_seconds_bucket{le="5.0"} 1.0' in text
    assert 'ltxserve_generation_seconds_bucket{le="+Inf"} 2.0' in text
    assert "ltxserve_generation_seconds_count 2.0" in text and "ltxserve_generation_seconds_sum 9.5" in text
    store.close()
