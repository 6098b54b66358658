"""/metrics serves the generation-time histogram the store observed when each job completed (that its counts never
drop when jobs expire is in the store contract suite)."""

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
