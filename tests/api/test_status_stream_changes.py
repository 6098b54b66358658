"""The status stream waits on the store's change notification (Redis pub/sub) instead of re-reading the job every
0.2 s: while nothing happens it reads nothing, and every change still reaches the client at once."""

from __future__ import annotations

import json
import threading
import time

from fastapi.testclient import TestClient

from ltxserve.api.app import create_app
from ltxserve.config import Settings
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.redis_store import RedisJobStore

STEPS = "tests.endpoints_for_tests:STEPS"
QUIET_SECONDS = 2.0  # nothing happens to the job for this long: a 0.2 s poll would read it ~10 times


class CountingStore(RedisJobStore):
    reads = 0

    def status_view(self, request_id):
        type(self).reads += 1
        return super().status_view(request_id)


def test_stream_reads_on_changes_only_and_sends_each_state(tmp_path, redis_url):
    store = CountingStore(redis_url)
    app = create_app(Settings(data_dir=tmp_path, endpoints=[STEPS]), store)
    worker = RedisJobStore(redis_url)  # another node's view: its changes arrive over pub/sub
    with TestClient(app) as client:
        rid = client.post("/queue/test/steps", json={"steps": 1}).json()["request_id"]
        streaming = threading.Event()

        def drive() -> None:
            streaming.wait(10)
            time.sleep(QUIET_SECONDS)
            CountingStore.reads_when_quiet_ended = CountingStore.reads
            worker.claim_next("w", ["test/steps"])
            worker.set_progress(rid, 1, 1, "steps")
            worker.append_log(rid, "step 1/1")
            worker.complete(rid, Outcome.ok({"label": "job", "steps_done": 1, "report": {"url": "x"}}))

        driver = threading.Thread(target=drive)
        driver.start()
        events = []
        with client.stream("GET", f"/queue/test/steps/requests/{rid}/status/stream", params={"logs": 1}) as r:
            assert r.status_code == 200
            CountingStore.reads_at_start = CountingStore.reads
            streaming.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        driver.join(10)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "IN_QUEUE" and statuses[-1] == "COMPLETED"  # (IN_PROGRESS may pass between two reads)
    assert events[-1]["logs"][-1]["message"] == "step 1/1"
    # While the job did not change, the stream did not read it (a poll would have read it ~10 times); then one read
    # per published change (claim, progress, log, completion, and the queue moving).
    quiet_reads = CountingStore.reads_when_quiet_ended - CountingStore.reads_at_start
    assert quiet_reads <= 1, quiet_reads
    assert CountingStore.reads - CountingStore.reads_when_quiet_ended <= 8
    worker.close()
    store.close()
