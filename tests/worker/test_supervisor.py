"""The supervisor with real spawned worker processes: kill -9 recovery, retry limits, restart recovery, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from ltxserve.config import Settings
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job
from ltxserve.protocol import QueueState
from ltxserve.wiring import run_worker_node
from ltxserve.worker.supervisor import Supervisor, describe_exit
from tests.worker.endpoints import STEPS_ID

pytestmark = pytest.mark.timeout(180)
SPEC = "tests.worker.endpoints:STEPS"


def make_settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, endpoints=[SPEC], workers=1, max_attempts=2,
                    worker_heartbeat_seconds=0.5, worker_restart_backoff_seconds=0.1)


def submit(store, **inp) -> str:
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id=STEPS_ID, owner="test", app="steps", input=inp))
    return rid


def wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def markers(data_dir: Path, rid: str) -> list[Path]:
    return sorted((data_dir / "markers").glob(rid + ".*"))


@pytest.fixture
def running(tmp_path):
    settings = make_settings(tmp_path)
    store = SqliteJobStore(settings.db_path)
    sup = Supervisor(settings, store, worker_entry=run_worker_node)
    yield settings, store, sup
    sup.stop(grace_seconds=2)
    store.close()


def test_describe_exit_names_the_signal():
    assert "SIGKILL" in describe_exit(-signal.SIGKILL)
    assert "code 3" in describe_exit(3)


def test_kill_9_mid_job_is_retried_and_completes(running):
    settings, store, sup = running
    rid = submit(store, text="survive", steps=30, step_seconds=0.1)
    sup.start()
    wait_for(lambda: store.logs(rid), what="the job to start")
    [first] = markers(settings.data_dir, rid)
    os.kill(int(first.read_text()), signal.SIGKILL)
    job = wait_for(lambda: (j := store.get(rid)).state == QueueState.COMPLETED and j, what="completion")
    assert job.error is None and job.result["reversed"] == "survive"[::-1] and job.attempts == 2
    second = markers(settings.data_dir, rid)[1]
    assert second.read_text() != first.read_text()  # a new worker process ran it
    assert any("SIGKILL" in e.message and "retrying" in e.message for e in store.logs(rid))


def test_job_whose_worker_dies_twice_completes_with_error(running):
    settings, store, sup = running
    rid = submit(store, text="doomed", crash_until=99)
    after = submit(store, text="ok")
    sup.start()
    job = wait_for(lambda: (j := store.get(rid)).state == QueueState.COMPLETED and j, what="completion")
    assert job.error_type == "runner_disconnected" and "SIGKILL" in job.error
    assert len(markers(settings.data_dir, rid)) == 2
    # The restarted worker goes on with the queue.
    done = wait_for(lambda: (j := store.get(after)).state == QueueState.COMPLETED and j, what="next job")
    assert done.result["reversed"] == "ok"[::-1]


def test_start_recovers_jobs_left_in_progress_by_a_killed_server(running):
    from ltxserve.jobs.housekeeping import Housekeeper

    settings, store, sup = running
    rid = submit(store, text="orphan")
    assert store.claim_next("old-server-w0", [STEPS_ID]).request_id == rid
    store.heartbeat("old-server-w0", ready=True)
    store._db().execute("UPDATE workers SET seen_at = seen_at - 3600")  # its last heartbeat is long gone
    # The node's housekeeping (run beside the supervisor by `serve`) reaps workers whose heartbeat stopped.
    housekeeper = Housekeeper(store, lambda f: None, lost_after_seconds=settings.worker_lost_after_seconds,
                              max_attempts=settings.max_attempts)
    sup.start()
    housekeeper.start()
    try:
        job = wait_for(lambda: (j := store.get(rid)).state == QueueState.COMPLETED and j, what="completion")
    finally:
        housekeeper.stop()
    assert job.error is None and job.result["reversed"] == "orphan"[::-1] and job.attempts == 2
    assert job.worker_id != "old-server-w0"


SUPERVISOR_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ltxserve.config import Settings
    from ltxserve.jobs.sqlite import SqliteJobStore
    from ltxserve.worker.supervisor import Supervisor
    from ltxserve.wiring import run_worker_node
    settings = Settings(data_dir=Path(sys.argv[1]), endpoints=[sys.argv[2]], workers=1, worker_heartbeat_seconds=0.5)
    Supervisor(settings, SqliteJobStore(settings.db_path), worker_entry=run_worker_node).start()
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has exited already


def test_workers_die_when_the_supervisor_is_killed(tmp_path):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR_SCRIPT, str(tmp_path), SPEC], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        workers = wait_for(lambda: [w for w in store.live_workers(30) if w["ready"]], what="a ready worker")
        pid = workers[0]["info"]["pid"]
        assert _alive(pid)
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not _alive(pid), timeout=15, what="the orphaned worker to exit")
    store.close()


# --- fail fast: a worker that cannot load its model ----------------------------------------------------------------

BROKEN_SPEC = "tests.worker.broken_endpoint:BROKEN"


def test_a_model_that_cannot_load_stops_restarts_and_fails_queued_jobs(tmp_path):
    from tests.worker.broken_endpoint import BROKEN_ID

    missing = tmp_path / "no-such-model"
    settings = Settings(data_dir=tmp_path, endpoints=[BROKEN_SPEC], workers=1, model=str(missing),
                        worker_heartbeat_seconds=0.5, worker_restart_backoff_seconds=0.05,
                        worker_max_failed_starts=2)
    store = SqliteJobStore(settings.db_path)
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id=BROKEN_ID, owner="test", app="broken", input={"text": "x"}))
    gave_up = threading.Event()
    reasons: list[str] = []
    sup = Supervisor(settings, store, on_give_up=lambda reason: (reasons.append(reason), gave_up.set()),
                     worker_entry=run_worker_node)
    try:
        sup.start()
        assert gave_up.wait(120), "the supervisor never gave up"
        assert str(missing) in reasons[0]
        job = store.get(rid)
        assert job.state == QueueState.COMPLETED and str(missing) in job.error
        assert job.error_type == "runner_scheduling_failure" and job.status_code == 503
        assert [s.failed_starts for s in sup.slots] == [2] and sup.slots[0].process is None
        # The slot's failure stays visible to /readyz (as a never-ready row carrying the reason).
        [row] = [w for w in store.live_workers(30) if (w["info"] or {}).get("startup_error")]
        assert row["info"]["gave_up"] and str(missing) in row["info"]["startup_error"]
        restarts = sup.slots[0].restarts
        time.sleep(0.5)  # a window in which a restarting supervisor would spawn again (backoff is 0.05 s)
        assert sup.slots[0].restarts == restarts and sup.slots[0].process is None
    finally:
        sup.stop(grace_seconds=2)
        store.close()


def test_a_worker_that_loaded_once_is_restarted_without_limit(running):
    settings, store, sup = running
    settings = settings.model_copy(update={"worker_max_failed_starts": 1})
    sup.settings = settings
    rid = submit(store, text="doomed", crash_until=99)
    sup.start()
    job = wait_for(lambda: (j := store.get(rid)).state == QueueState.COMPLETED and j, what="completion")
    assert job.error_type == "runner_disconnected"  # died twice mid-job, after loading: not a start failure
    assert sup.failure is None and not sup.slots[0].gave_up
    wait_for(lambda: sup.slots[0].process is not None and sup.slots[0].process.is_alive(), what="a restart")
