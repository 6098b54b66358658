"""The worker's job loop, in process: results, files, errors as values, cancellation between steps."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from ltxserve.config import Settings
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job
from ltxserve.protocol import QueueState
from ltxserve.storage import storage_from_settings
from ltxserve.worker.runner import Worker
from tests.worker.endpoints import STEPS_ID

SPEC = "tests.worker.endpoints:STEPS"


@pytest.fixture
def worker(tmp_path):
    settings = Settings(data_dir=tmp_path, endpoints=[SPEC], public_url="http://files.example:9000/")
    store = SqliteJobStore(settings.db_path)
    w = Worker(settings, "w-test", store, storage_from_settings(settings))
    w.build_endpoints()
    yield w
    store.close()


def submit(store, **inp) -> str:
    rid = uuid.uuid4().hex
    store.submit(Job(request_id=rid, endpoint_id=STEPS_ID, owner="test", app="steps", input=inp))
    return rid


def run_next(worker: Worker) -> Job:
    job = worker.store.claim_next(worker.worker_id, list(worker.endpoints))
    worker.run_job(job)
    return worker.store.get(job.request_id)


def test_job_completes_with_result_logs_and_file(worker):
    rid = submit(worker.store, text="hello", steps=2)
    job = run_next(worker)
    assert job.request_id == rid and job.state == QueueState.COMPLETED and job.error is None
    assert job.result["reversed"] == "olleh" and job.inference_time > 0
    f = job.result["file"]
    assert f["url"].startswith("http://files.example:9000/files/") and f["url"].endswith("/out.txt")
    file_id = f["url"].split("/")[-2]
    stored = worker.store.get_file(file_id)
    assert stored.request_id == rid and stored.file_size == 5
    assert (worker.settings.files_dir / stored.path).read_text() == "olleh"  # the default layout: <id>/<name>
    assert worker.storage.path_for(stored).read_text() == "olleh"
    assert [e.message for e in worker.store.logs(rid)] == ["step 1/2", "step 2/2"]
    assert worker.store.get(rid).progress == {"step": 2, "total": 2, "stage": "steps"}
    assert worker.store.live_workers(60)[0]["ready"]


def test_endpoint_error_completes_with_error(worker):
    submit(worker.store, text="x", fail_with="endpoint")
    job = run_next(worker)
    assert job.state == QueueState.COMPLETED and job.result is None
    assert job.error == "the text is unprintable" and job.error_type == "generation_error"
    assert job.status_code == 500 and job.error_body["detail"] == "the text is unprintable"


def test_bug_is_internal_error_without_trace_and_worker_goes_on(worker):
    submit(worker.store, text="x", fail_with="bug")
    good = submit(worker.store, text="ab")
    job = run_next(worker)
    assert job.error_type == "internal_error" and job.status_code == 500
    assert "secret internals" not in job.error and "Traceback" not in job.error
    assert run_next(worker).request_id == good and worker.store.get(good).result["reversed"] == "ba"


def test_input_that_no_longer_validates_is_422(worker):
    submit(worker.store, text="", steps=0)
    job = run_next(worker)
    assert job.status_code == 422 and job.error_type == "validation_error"
    fields = {tuple(d["loc"]) for d in job.error_body["detail"]}
    assert fields == {("body", "text"), ("body", "steps")}


def test_cancel_of_running_job_stops_at_next_step(worker):
    rid = submit(worker.store, text="slow", steps=50, step_seconds=0.05)
    job = worker.store.claim_next(worker.worker_id, list(worker.endpoints))
    t = threading.Thread(target=worker.run_job, args=(job,))
    t.start()
    deadline = time.time() + 10
    while not worker.store.logs(rid) and time.time() < deadline:
        time.sleep(0.02)
    assert worker.store.request_cancel(rid) == "CANCELLATION_REQUESTED"
    t.join(timeout=10)
    done = worker.store.get(rid)
    assert done.state == QueueState.COMPLETED and done.error_type == "request_cancelled"
    steps_run = sum(1 for e in worker.store.logs(rid) if e.message.startswith("step "))
    assert 1 <= steps_run < 50


class FlakyStore:
    """The worker's store, away for the first `failures` calls of the named methods (a Redis restart)."""

    def __init__(self, store, failures: int, methods: tuple[str, ...]):
        self._store, self._left, self._methods = store, {m: failures for m in methods}, methods
        self.failed = {m: 0 for m in methods}

    def __getattr__(self, name):
        target = getattr(self._store, name)
        if name not in self._methods:
            return target

        def call(*args, **kwargs):
            if self._left[name] > 0:
                self._left[name] -= 1
                self.failed[name] += 1
                raise ConnectionError("store away")
            return target(*args, **kwargs)
        return call


def test_the_worker_rides_out_a_store_outage_when_claiming_and_reporting(worker, monkeypatch):
    import ltxserve.worker.runner as runner

    monkeypatch.setattr(runner.time, "sleep", lambda s: None)  # the report's back-off; the claim's waits on _stop
    flaky = FlakyStore(worker.store, failures=2, methods=("claim_next", "complete"))
    worker.store = flaky
    rid = submit(flaky._store, text="abc", steps=1)
    loop = threading.Thread(target=worker._serve, args=(0.01,), daemon=True)
    loop.start()
    deadline = time.monotonic() + 30
    while flaky._store.get(rid).state != QueueState.COMPLETED and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    loop.join(10)
    assert not loop.is_alive()
    assert flaky.failed == {"claim_next": 2, "complete": 2}
    assert flaky._store.get(rid).result["reversed"] == "cba"


def test_an_outcome_from_a_worker_that_no_longer_holds_the_job_is_dropped(worker):
    rid = submit(worker.store, text="abc", steps=1)
    job = worker.store.claim_next(worker.worker_id, list(worker.endpoints))
    worker.store.release_worker_jobs(worker.worker_id, "taken for lost", max_attempts=2)
    other = worker.store.claim_next("w-other", list(worker.endpoints))
    assert other.request_id == rid
    worker.run_job(job)  # finishes, but w-other holds the job now
    after = worker.store.get(rid)
    assert after.state == QueueState.IN_PROGRESS and after.worker_id == "w-other" and after.result is None


def test_a_job_recorded_as_held_but_not_running_is_put_back_and_the_job_in_hand_is_kept(worker):
    # A Redis crash can lose a completion: the store then says this live worker still holds a job it finished.
    lost = submit(worker.store, text="lost", steps=1)
    in_hand = submit(worker.store, text="abc", steps=1)
    assert worker.store.claim_next(worker.worker_id, list(worker.endpoints)).request_id == lost
    worker.current = worker.store.claim_next(worker.worker_id, list(worker.endpoints)).request_id
    assert worker.current == in_hand
    worker._drop_stale_holds()
    assert worker.store.get(lost).state == QueueState.IN_QUEUE and worker.store.get(lost).worker_id is None
    assert worker.store.get(in_hand).state == QueueState.IN_PROGRESS
    assert worker.store.held_jobs(worker.worker_id) == [in_hand]
    assert "not running it" in worker.store.logs(lost)[-1].message
