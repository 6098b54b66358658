"""`ltxserve serve --model /nonexistent` on the CPU: the reason is in /readyz and in the jobs, and serve exits 1."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job
from ltxserve.engine.schema import ENDPOINT_ID
from ltxserve.protocol import QueueState

pytestmark = pytest.mark.timeout(300)


def test_serve_with_a_missing_model_says_why_and_exits_non_zero(live_server_factory, tmp_path):
    missing = tmp_path / "nonexistent-model"
    server = live_server_factory(
        endpoints=["ltxserve.engine.schema:SPEC"], extra_args=["--model", str(missing)], start=False,
        env={"LTXSERVE_WORKER_MAX_FAILED_STARTS": "3", "LTXSERVE_WORKER_RESTART_BACKOFF_SECONDS": "0.5"},
    )
    # A job queued before the start (as after a restart): nothing can ever run it, so it must end with the reason.
    server.data_dir.mkdir(parents=True)
    store = SqliteJobStore(server.data_dir / "jobs.sqlite3")
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id=ENDPOINT_ID, owner="test", app="ltx", input={"prompt": "x"}))
    server.start(wait_ready=False)

    seen: dict = {}
    deadline = time.time() + 240
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        while time.time() < deadline and server.process.poll() is None:
            try:
                r = client.get("/readyz")
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if r.status_code == 503 and str(missing) in r.json().get("reason", ""):
                seen = r.json()
                break
            time.sleep(0.1)
    assert seen, f"/readyz never named the missing path:\n{server.log()}"
    assert seen["ready"] is False and "cannot load its model" in seen["reason"]

    assert server.process.wait(timeout=240) == 1, server.log()
    assert "no worker could load the model" in server.log() and str(missing) in server.log()
    job = store.get(rid)
    assert job.state == QueueState.COMPLETED and str(missing) in job.error, job
    assert job.status_code == 503 and job.error_type == "runner_scheduling_failure"
    assert any(str(missing) in e.message for e in store.logs(rid))
    store.close()
