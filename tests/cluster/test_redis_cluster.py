"""Many nodes on one Redis: two API nodes (`ltxserve serve --store redis://... --workers 0`) and two worker nodes
(`ltxserve worker --store ...`), all real processes on loopback sharing one --files folder.

A job submitted on one node is read and fetched on the other; a worker killed -9 mid-job has its job retried by the
other worker; an API node killed -9 loses nothing; a Redis restart (AOF) loses no accepted job; 1000 concurrent
submissions are all queued, in positions that add up. The official `fal_client` drives node A.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import pytest

from ltxserve.jobs.redis_store import RedisJobStore
from ltxserve.protocol import QueueState
from tests.clients.conftest_helpers import run_py
from tests.fixtures_server import REPO, LiveServer, free_port
from tests.jobs.redis_server import RedisServer

pytestmark = pytest.mark.slow

STEPS = "tests.endpoints_for_tests:STEPS"
ECHO = "tests.endpoints_for_tests:ECHO"  # served by the API nodes only: no worker ever claims it
NODE_ENV = {
    "LTXSERVE_WORKER_HEARTBEAT_SECONDS": "0.5",
    # A worker silent this long is lost: well above a Redis restart's pause in heartbeats, well below the tests' waits.
    "LTXSERVE_WORKER_LOST_AFTER_SECONDS": "4",
}


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


@dataclass
class WorkerNode:
    folder: Path
    redis_url: str
    files: Path
    public_url: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def start(self) -> "WorkerNode":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / f"worker-{int(time.time() * 1000)}.log"
        cmd = [sys.executable, "-m", "ltxserve.cli", "worker", "--store", self.redis_url, "--files", str(self.files),
               "--data-dir", str(self.folder), "--public-url", self.public_url, "--endpoint", STEPS,
               "--model", "tiny"]
        self.process = subprocess.Popen(cmd, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO,
                                        env={**os.environ, "PYTHONPATH": str(REPO), **NODE_ENV},
                                        start_new_session=True)
        return self

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""


@dataclass
class Cluster:
    redis: RedisServer
    store: RedisJobStore  # the tests' own view of the shared store
    a: LiveServer  # TLS, for fal_client
    b: LiveServer
    workers: list[WorkerNode] = field(default_factory=list)

    def ready_workers(self) -> int:
        return sum(1 for w in self.store.live_workers(2.0) if w["ready"])

    def worker_holding(self, request_id: str) -> WorkerNode:
        holder = self.store.get(request_id).worker_id
        pids = {w["worker_id"]: (w["info"] or {}).get("pid") for w in self.store.live_workers(60)}
        return next(w for w in self.workers if w.process is not None and w.process.pid == pids[holder])


def _api_node(root: Path, name: str, redis_url: str, files: Path, tls_dir: Path | None) -> LiveServer:
    return LiveServer(data_dir=root / name, port=free_port(), endpoints=[STEPS, ECHO], tls_dir=tls_dir,
                      extra_args=["--store", redis_url, "--workers", "0", "--files", str(files)], env=NODE_ENV)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ltxserve.tls import init_tls

    root = tmp_path_factory.mktemp("cluster")
    init_tls(root / "tls")
    redis_server = RedisServer(root / "redis").start()
    files = root / "files"
    a = _api_node(root, "api-a", redis_server.url, files, root / "tls")
    b = _api_node(root, "api-b", redis_server.url, files, None)
    workers = [WorkerNode(root / f"worker-{i}", redis_server.url, files, a.base_url).start() for i in range(2)]
    c = Cluster(redis_server, RedisJobStore(redis_server.url), a, b, workers)
    try:
        wait_until(lambda: c.ready_workers() == 2, 90, "two worker nodes ready")
        a.start()
        b.start()
        yield c
    finally:
        for node in (a, b, *workers):
            node.stop()
        c.store.close()
        redis_server.stop()


def _submit(server: LiveServer, body: dict, endpoint: str = "test/steps") -> dict:
    with server.client() as client:
        r = client.post(f"/queue/{endpoint}", json=body)
        assert r.status_code == 200, r.text
        return r.json()


def _status(server: LiveServer, owner_app: str, request_id: str, logs: bool = False) -> dict:
    with server.client() as client:
        r = client.get(f"/queue/{owner_app}/requests/{request_id}/status", params={"logs": int(logs)})
        assert r.status_code in (200, 202), r.text
        return r.json()


def _done(server: LiveServer, request_id: str) -> dict | None:
    doc = _status(server, "test/steps", request_id)
    return doc if doc["status"] == "COMPLETED" else None


def test_fal_client_on_node_a_and_everything_readable_and_fetchable_on_node_b(cluster):
    out = run_py("submit_status_get", cluster.a, "test/steps", {"steps": 3, "seconds_per_step": 0.05,
                                                                  "label": "cross"})
    assert out["events"][-1]["type"] == "Completed" and out["result"]["steps_done"] == 3
    rid = out["request_id"]
    # Node B: status with logs, the result, and the output file (written by a worker into the shared folder).
    doc = _status(cluster.b, "test/steps", rid, logs=True)
    assert doc["status"] == "COMPLETED" and doc["error"] is None
    assert [e["message"] for e in doc["logs"] if "step" in e["message"]] == [f"cross step {i}/3" for i in (1, 2, 3)]
    with cluster.b.client() as client:
        assert client.get(f"/queue/test/steps/requests/{rid}").json() == out["result"]
        report_url = out["result"]["report"]["url"]
        assert report_url.startswith(cluster.a.base_url)  # the workers' --public-url
        fetched = client.get(report_url.replace(cluster.a.base_url, cluster.b.base_url))
        assert fetched.status_code == 200 and fetched.text == "cross:1\ncross:2\ncross:3"


def test_worker_killed_mid_job_is_retried_by_the_other_worker(cluster):
    rid = _submit(cluster.b, {"steps": 60, "seconds_per_step": 0.05, "label": "survivor"})["request_id"]
    wait_until(lambda: (cluster.store.get(rid).progress or {}).get("step", 0) >= 2, 30, "job running")
    victim, victim_id = cluster.worker_holding(rid), cluster.store.get(rid).worker_id
    victim.kill9()
    try:
        done = wait_until(lambda: _done(cluster.a, rid), 60, "job completed by the other worker")
        assert done["error"] is None
        job = cluster.store.get(rid)
        assert job.attempts == 2 and job.result["steps_done"] == 60
        assert job.worker_id != victim_id  # finished by the other worker node
        messages = [e.message for e in cluster.store.logs(rid)]
        assert any("worker lost" in m and "retrying (attempt 2)" in m for m in messages), messages
    finally:
        victim.start()  # the cluster has two workers again for the next tests
        wait_until(lambda: cluster.ready_workers() == 2, 90, "replacement worker ready")


def test_api_node_killed_loses_nothing(cluster):
    rids = [_submit(cluster.a, {"steps": 4, "seconds_per_step": 0.05, "label": f"j{i}"})["request_id"]
            for i in range(6)]
    cluster.a.kill9()  # some of them queued, some running
    try:
        for i, rid in enumerate(rids):
            done = wait_until(lambda: _done(cluster.b, rid), 60, f"job {i} completed")
            assert done["error"] is None
            with cluster.b.client() as client:
                assert client.get(f"/queue/test/steps/requests/{rid}").json()["label"] == f"j{i}"
    finally:
        cluster.a.start()


def test_redis_restart_loses_no_accepted_job(cluster):
    rids = [_submit(cluster.b, {"steps": 3, "seconds_per_step": 0.1, "label": f"r{i}"})["request_id"]
            for i in range(8)]
    wait_until(lambda: cluster.store.counts().in_progress > 0, 30, "jobs running")
    cluster.redis.restart()  # SIGTERM (AOF fsynced), then started again on the same folder and port
    after = [_submit(cluster.a, {"steps": 1, "label": f"after{i}"})["request_id"] for i in range(2)]
    for rid in rids + after:
        done = wait_until(lambda: _done(cluster.b, rid), 90, f"{rid} completed after the restart")
        assert done["error"] is None, done
    assert all(w.process.poll() is None for w in cluster.workers), "a worker node died with the restart"


def test_a_thousand_concurrent_submissions_are_all_queued_in_consistent_positions(cluster):
    """Split over both API nodes; no worker serves this endpoint, so every job stays queued where it landed."""
    count, concurrency = 1000, 50
    body = {"image_url": "data:image/png;base64,AAAA", "text": "x"}

    async def submit_all() -> list[dict]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=60, verify=cluster.a.verify()) as client:
            async def one(i: int) -> dict:
                node = cluster.a if i % 2 else cluster.b
                async with sem:
                    r = await client.post(f"{node.base_url}/queue/test/echo-image", json=body)
                assert r.status_code == 200, r.text
                return r.json()

            return await asyncio.gather(*(one(i) for i in range(count)))

    ahead = cluster.store.counts().in_queue  # whatever earlier tests left queued (nothing, normally)
    answers = asyncio.run(submit_all())
    rids = [a["request_id"] for a in answers]
    assert len(set(rids)) == count
    assert cluster.store.counts().in_queue == ahead + count
    # Nothing leaves the queue, so the position each submit answered is final: together, exactly ahead..ahead+999.
    positions = {a["request_id"]: a["queue_position"] for a in answers}
    assert sorted(positions.values()) == list(range(ahead, ahead + count))
    for rid in rids[::50]:  # and the other node reports the same (a sample: one status each)
        doc = _status(cluster.a, "test/echo-image", rid)
        assert doc["status"] == QueueState.IN_QUEUE.value and doc["queue_position"] == positions[rid]
    for rid in rids:  # tidy up for whatever runs next on this Redis
        cluster.store.request_cancel(rid)
