"""SQLite specifics: several processes sharing one database file never claim one job twice.

Everything else a store must do is in the backend-independent contract suite (test_store_contract.py).
"""

from __future__ import annotations

import multiprocessing as mp
import uuid
from pathlib import Path

from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job
from ltxserve.protocol import Priority

EP = "test/app/run"


def make_job(priority: Priority = Priority.NORMAL, **kw) -> Job:
    return Job(request_id=kw.pop("request_id", uuid.uuid4().hex), endpoint_id=EP, owner="test", app="app",
               input={"x": 1}, priority=priority, **kw)


def _claim_in_rounds(path: str, worker_id: str, barrier, rounds: int, out) -> None:
    s = SqliteJobStore(Path(path))
    s.queue_position("warm-up")  # open the connection before the start line
    got = []
    for _ in range(rounds):
        barrier.wait(60)  # all processes claim at the same moment, every round: real contention each time
        job = s.claim_next(worker_id, [EP])
        got.append(job.request_id if job else None)
    barrier.wait(60)
    got.append(s.claim_next(worker_id, [EP]))  # the queue is empty now for everyone
    out.put((worker_id, got))


def test_concurrent_claims_from_processes_never_double_claim(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    workers, rounds = 3, 20
    ids = {store.submit(make_job()).request_id for _ in range(workers * rounds)}
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_claim_in_rounds, args=(str(path), f"w{i}", barrier, rounds, out))
             for i in range(workers)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    for got in results.values():
        assert got[-1] is None and None not in got[:-1]  # one job per process per round, then none left
    claimed = [rid for got in results.values() for rid in got[:-1]]
    assert len(claimed) == len(set(claimed)) == len(ids)  # 60 claims racing in threes, never one job twice
    assert set(claimed) == ids
