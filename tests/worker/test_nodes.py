"""Nodes: `ltxserve serve --workers 0` (an API node alone) and `ltxserve worker` (a worker node alone), as separate
processes sharing one store (a SQLite file here) and one files folder. A job submitted to the API node is run by the
worker node; a worker node killed -9 mid-job is found by the API node's reaper (its heartbeat stops) and the job is
retried by the next worker node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ltxserve.jobs.sqlite import SqliteJobStore
from tests.api.helpers import submit, wait_completed, wait_state
from tests.clients.endpoints import TARGET_INPUT
from tests.fixtures_server import LTX_ENDPOINT_SPEC, REPO, LiveServer, free_port

pytestmark = pytest.mark.timeout(300)
STEPS_SPEC = "tests.endpoints_for_tests:STEPS"
LTX = "fal-ai/ltx-video-13b-dev/image-to-video"


@pytest.fixture
def api_node(tmp_path):
    node = LiveServer(data_dir=tmp_path / "data", port=free_port(), endpoints=[LTX_ENDPOINT_SPEC, STEPS_SPEC],
                      extra_args=["--workers", "0", "--model", "tiny", "--files", str(tmp_path / "files")],
                      env={"LTXSERVE_WORKER_LOST_AFTER_SECONDS": "2"})
    node.start(wait_ready=False)
    deadline = time.time() + 60
    with node.client() as c:
        while True:
            assert node.process.poll() is None, node.log()
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, node.log()
            time.sleep(0.1)
    yield node
    node.stop()


class WorkerNode:
    def __init__(self, api: LiveServer, files: Path, endpoints: list[str]):
        cmd = [sys.executable, "-m", "ltxserve.cli", "worker", "--data-dir", str(api.data_dir), "--files", str(files),
               "--public-url", api.base_url, "--model", "tiny"]
        for e in endpoints:
            cmd += ["--endpoint", e]
        self.log_path = files.parent / f"worker-{time.time_ns()}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "LTXSERVE_WORKER_HEARTBEAT_SECONDS": "0.5"}
        self.process = subprocess.Popen(cmd, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO,
                                        env=env, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def wait_ready_worker(client: httpx.Client, worker: WorkerNode, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while client.get("/readyz").status_code != 200:
        assert worker.process.poll() is None, worker.log()
        assert time.time() < deadline, worker.log()
        time.sleep(0.2)


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc/*/stat: the parent pid is the field after the state)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def test_api_node_alone_runs_no_worker_and_a_worker_node_runs_its_jobs(api_node, tmp_path):
    with api_node.client() as c:
        sub = submit(c, LTX, TARGET_INPUT)  # the tiny model at a tiny size
        # No worker: the API node answers, queues, and runs nothing itself.
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["workers"] == 0
        assert children_of(api_node.process.pid) == []
        assert c.get(sub["status_url"]).json()["status"] == "IN_QUEUE"

        worker = WorkerNode(api_node, tmp_path / "files", [LTX_ENDPOINT_SPEC])
        assert children_of(os.getpid()) != []  # the child scan sees children where there are some
        try:
            wait_ready_worker(c, worker)
            done = wait_completed(c, sub["status_url"], timeout=180)
            assert done["error"] is None, done
            out = c.get(sub["response_url"]).json()
            video = out["video"]
            assert video["url"].startswith(api_node.base_url + "/files/") and video["content_type"] == "video/mp4"
            got = c.get(video["url"])
            assert got.status_code == 200 and got.content[4:8] == b"ftyp" and len(got.content) == video["file_size"]
            # The worker node wrote it into the shared files folder, where the API node served it from.
            assert (tmp_path / "files" / video["url"].split("/")[-2]).is_dir()
            assert children_of(api_node.process.pid) == []
            # SIGTERM: the idle worker node stops cleanly and says goodbye in the store.
            worker.process.send_signal(signal.SIGTERM)
            assert worker.process.wait(15) == 0, worker.log()
        finally:
            worker.stop()
    store = SqliteJobStore(api_node.data_dir / "jobs.sqlite3")
    try:
        assert store.live_workers(60) == []
    finally:
        store.close()


def test_a_worker_node_killed_mid_job_is_reaped_and_the_job_runs_on_the_next(api_node, tmp_path):
    files = tmp_path / "files"
    with api_node.client() as c:
        sub = submit(c, "test/steps", {"steps": 60, "seconds_per_step": 0.05, "label": "survivor"})
        first = WorkerNode(api_node, files, [STEPS_SPEC])
        try:
            wait_state(c, sub["status_url"], "IN_PROGRESS", timeout=120)
            os.killpg(first.process.pid, signal.SIGKILL)
            first.process.wait(10)
        finally:
            first.stop()
        # Nobody saw that process exit: only its stale heartbeat tells the API node's reaper (2 s here).
        second = WorkerNode(api_node, files, [STEPS_SPEC])
        try:
            done = wait_completed(c, sub["status_url"], timeout=120)
            assert done["error"] is None, done
            messages = [line["message"] for line in done["logs"]]
            assert any("worker lost" in m and "retrying (attempt 2)" in m for m in messages), messages
            out = c.get(sub["response_url"]).json()
            assert (out["label"], out["steps_done"]) == ("survivor", 60)
        finally:
            second.stop()
    store = SqliteJobStore(api_node.data_dir / "jobs.sqlite3")
    try:
        job = store.get(sub["request_id"])
        assert job.attempts == 2 and job.worker_id.endswith("-node")
    finally:
        store.close()


def test_sigterm_puts_a_long_job_back_when_it_cannot_finish_within_the_grace(api_node, tmp_path):
    from ltxserve.worker.runner import STOP_GRACE_SECONDS

    with api_node.client() as c:
        sub = submit(c, "test/steps", {"steps": 400, "seconds_per_step": 0.05, "label": "long"})  # 20 s
        worker = WorkerNode(api_node, tmp_path / "files", [STEPS_SPEC])
        try:
            wait_state(c, sub["status_url"], "IN_PROGRESS", timeout=120)
            started = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            assert worker.process.wait(STOP_GRACE_SECONDS + 10) == 0, worker.log()
            took = time.monotonic() - started
        finally:
            worker.stop()
        status = c.get(sub["status_url"], params={"logs": "1"}).json()
    assert STOP_GRACE_SECONDS - 1 <= took < STOP_GRACE_SECONDS + 5
    assert status["status"] == "IN_QUEUE"  # back in the queue for the next worker, not failed
    messages = [line["message"] for line in status["logs"]]
    assert any("stopped while the job ran" in m for m in messages) and not any("lost" in m for m in messages)
