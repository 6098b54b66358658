"""Holes 10 and (issue item) SIGTERM: the API process never loads torch; SIGTERM stops `serve` within docker's
10 s grace period with the running job re-queued, not lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from ltxserve.jobs.sqlite import SqliteJobStore
from tests.api.helpers import submit, wait_completed, wait_state
from tests.security.conftest import repo_path

_NO_TORCH = """
import sys
from pathlib import Path
from ltxserve.api.app import create_app
from ltxserve.wiring import run_worker_node, serve  # the wiring module, as `ltxserve serve` imports it
from ltxserve.config import Settings
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.worker.supervisor import Supervisor
settings = Settings(data_dir=Path(sys.argv[1]))
settings.data_dir.mkdir(parents=True, exist_ok=True)
store = SqliteJobStore(settings.db_path)
create_app(settings, store)           # the real endpoint's schema included
Supervisor(settings, store, worker_entry=run_worker_node)  # probes the GPUs to size the worker pool
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
print("LOADED", loaded[:5])
sys.exit(1 if loaded else 0)
"""


def test_api_process_imports_no_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, str(tmp_path / "data")], capture_output=True, text=True,
                         timeout=120, cwd=repo_path(), env={"PYTHONPATH": str(repo_path()), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def test_live_api_process_maps_no_libtorch(live_server):
    maps = open(f"/proc/{live_server.process.pid}/maps").read()
    assert "libtorch" not in maps and "libc10" not in maps
    assert live_server.worker_pids(), "the worker (which does load torch) is a separate process"


def test_sigterm_stops_serve_within_10s_and_requeues_the_running_job(live_server):
    with live_server.client() as c:
        sub = submit(c, "test/steps", {"steps": 200, "seconds_per_step": 0.05, "label": "long"})
        wait_state(c, sub["status_url"], "IN_PROGRESS")
        # a client holding a status stream open, as waiting clients do
        stream = httpx.Client(base_url=live_server.base_url, timeout=30)
        with stream.stream("GET", sub["status_url"] + "/stream") as events:
            next(events.iter_lines())
            started = time.monotonic()
            live_server.process.send_signal(signal.SIGTERM)
            code = live_server.process.wait(timeout=15)
            took = time.monotonic() - started
        stream.close()
    print(f"serve exited {code} {took:.1f} s after SIGTERM")
    assert took < 10
    store = SqliteJobStore(live_server.data_dir / "jobs.sqlite3")
    try:
        job = store.get(sub["request_id"])
        assert job.state.value == "IN_QUEUE" and job.error is None, job  # re-queued, not lost or failed
    finally:
        store.close()
    live_server.start()
    with live_server.client() as c:
        done = wait_completed(c, sub["status_url"], timeout=90)
        assert done["error"] is None and c.get(sub["response_url"]).json()["steps_done"] == 200
