"""What only the Redis store has to prove beyond the shared contract (tests/jobs/test_store_contract.py): a cancel
racing a completion from several threads, the change feed the status stream waits on, TTLs on completed
jobs, the webhook lease between nodes, and a Redis restart with AOF keeping every accepted job."""

from __future__ import annotations

import asyncio
import threading
import time

import redis

from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.redis_store import TTL_GRACE_SECONDS, WEBHOOK_LEASE_SECONDS, RedisJobStore
from ltxserve.protocol import Priority, QueueState
from tests.jobs.conftest import EP, make_job
from tests.jobs.redis_server import RedisServer


def test_cancel_racing_completion_has_one_consistent_winner(redis_url):
    """A cancel answered 202 always wins; one answered ALREADY_COMPLETED never changes the result."""
    store = RedisJobStore(redis_url)
    outcomes = {"CANCELLATION_REQUESTED": 0, "ALREADY_COMPLETED": 0}
    for _ in range(40):
        job = store.submit(make_job())
        store.claim_next("w", [EP])
        barrier = threading.Barrier(2)
        answers: dict[str, object] = {}

        def finish():
            barrier.wait(10)
            answers["complete"] = store.complete(job.request_id, Outcome.ok({"done": True}, inference_time=0.1))

        def cancel():
            barrier.wait(10)
            answers["cancel"] = store.request_cancel(job.request_id)

        threads = [threading.Thread(target=finish), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        done = store.get(job.request_id)
        assert answers["complete"] is True and done.state == QueueState.COMPLETED
        outcomes[answers["cancel"]] += 1
        if answers["cancel"] == "CANCELLATION_REQUESTED":
            assert done.error_type == "request_cancelled" and done.result is None
        else:
            assert done.error is None and done.result == {"done": True}
    store.close()


def test_change_feed_wakes_on_every_transition_and_only_then(redis_url):
    store = RedisJobStore(redis_url)
    job = store.submit(make_job())
    other = store.submit(make_job())

    async def watch() -> list[bool]:
        seen = []
        async with store.changes(job.request_id) as feed:
            seen.append(await feed.wait(0.3))  # nothing happens: times out
            for change in (lambda: store.claim_next("w", [EP]),
                           lambda: store.set_progress(job.request_id, 1, 2, "pass 1"),
                           lambda: store.append_log(job.request_id, "hello"),
                           lambda: store.complete(job.request_id, Outcome.ok({}))):
                await asyncio.to_thread(change)
                seen.append(await feed.wait(5))
            # Another job's change does not wake this feed (unless the queue moves: positions change).
            await asyncio.to_thread(store.set_progress, other.request_id, 1, 2, "x")
            seen.append(await feed.wait(0.3))
        return seen

    assert asyncio.run(watch()) == [False, True, True, True, True, False]
    store.close()


def test_api_status_cache_serves_repeats_and_drops_what_another_node_changed(redis_url):
    api, worker_node = RedisJobStore(redis_url), RedisJobStore(redis_url)
    first, second = api.submit(make_job()), api.submit(make_job(Priority.LOW))
    raw = redis.Redis.from_url(redis_url)
    assert api.status_view(second.request_id).progress == {"queue_position": 1}
    assert api._listener().subscribed.wait(10)  # the cache is live once the listener is subscribed
    assert api.status_view(second.request_id).progress == {"queue_position": 1}
    # A write that publishes nothing is not seen: the answer comes from the cache.
    raw.hset(f"ltx:job:{second.request_id}", "owner", "changed-behind-its-back")
    assert api.status_view(second.request_id).owner == "test"

    def until(predicate, what: str) -> None:
        deadline = time.monotonic() + 1.0  # well inside the cache's own 2 s bound
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.005)

    # Another node submits a normal job: it goes ahead of the low one, whose position is read again.
    worker_node.submit(make_job())
    until(lambda: api.status_view(second.request_id).progress == {"queue_position": 2}, "queue move not seen")
    assert api.status_view(second.request_id).owner == "changed-behind-its-back"
    # Another node claims and completes the first job: its entry is dropped on each change.
    assert api.status_view(first.request_id).state == QueueState.IN_QUEUE
    worker_node.claim_next("w", [EP])
    until(lambda: api.status_view(first.request_id).state == QueueState.IN_PROGRESS, "claim not seen")
    worker_node.complete(first.request_id, Outcome.ok({}))
    until(lambda: api.status_view(first.request_id).state == QueueState.COMPLETED, "completion not seen")
    # Its own writes are seen at once (no wait for the published message).
    api.request_cancel(second.request_id)
    assert api.status_view(second.request_id).state == QueueState.COMPLETED
    raw.close()
    api.close()
    worker_node.close()


def test_status_cache_is_dropped_while_redis_is_away(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        api = RedisJobStore(server.url)
        job = api.submit(make_job())
        api.status_view(job.request_id)
        assert api._listener().subscribed.wait(10)
        assert api.status_view(job.request_id).state == QueueState.IN_QUEUE
        server.stop()
        deadline = time.monotonic() + 10
        while api._listener().subscribed.is_set():  # the listener notices the lost connection
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.start()
        other = RedisJobStore(server.url)
        assert other.claim_next("w", [EP]).request_id == job.request_id  # changed while nobody listened
        assert api._listener().subscribed.wait(10)
        assert api.status_view(job.request_id).state == QueueState.IN_PROGRESS
        other.close()
        api.close()
    finally:
        server.stop()


def test_completed_jobs_get_a_ttl_on_all_their_keys(redis_url):
    store = RedisJobStore(redis_url, default_retention_seconds=100)
    job = store.submit(make_job(webhook_url="http://127.0.0.1:9/hook"))
    store.append_log(job.request_id, "line")
    store.claim_next("w", [EP])
    client = redis.Redis.from_url(redis_url)
    assert client.ttl(f"ltx:job:{job.request_id}") == -1  # no TTL while it runs
    store.complete(job.request_id, Outcome.ok({}))
    for key in ("job", "logs", "webhook"):
        ttl = client.ttl(f"ltx:{key}:{job.request_id}")
        assert 100 + TTL_GRACE_SECONDS - 5 <= ttl <= 100 + TTL_GRACE_SECONDS, key
    client.close()
    store.close()


def test_a_due_webhook_goes_to_one_node_until_its_lease_ends(redis_url):
    node_a, node_b = RedisJobStore(redis_url), RedisJobStore(redis_url)
    job = node_a.submit(make_job(webhook_url="http://127.0.0.1:9/hook"))
    node_a.complete(job.request_id, Outcome.ok({}))
    assert [d.request_id for d in node_a.due_webhooks()] == [job.request_id]
    assert node_b.due_webhooks() == []  # handed out already
    later = time.time() + WEBHOOK_LEASE_SECONDS + 1  # node A died mid-delivery: it is due again after the lease
    assert [d.request_id for d in node_b.due_webhooks(now=later)] == [job.request_id]
    node_b.record_webhook_attempt(job.request_id, ok=True, error=None, next_attempt_at=None)
    assert node_a.due_webhooks(now=later + 10 * WEBHOOK_LEASE_SECONDS) == []
    node_a.close()
    node_b.close()


def test_redis_restart_with_aof_keeps_every_accepted_job(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisJobStore(server.url)
        jobs = [store.submit(make_job(Priority.LOW if i % 3 == 0 else Priority.NORMAL)) for i in range(50)]
        running = store.claim_next("w", [EP])
        store.append_log(running.request_id, "started")
        queued = [j.request_id for j in jobs if j.request_id != running.request_id]
        positions = {rid: store.queue_position(rid) for rid in queued}
        assert sorted(positions.values()) == list(range(49))
        server.restart()  # SIGTERM: fsync and exit; start again on the same folder
        assert store.get(running.request_id).state == QueueState.IN_PROGRESS  # the pool reconnects
        assert [e.message for e in store.logs(running.request_id)] == ["started"]
        assert {rid: store.queue_position(rid) for rid in queued} == positions
        assert store.counts().in_queue == 49
        # The queue order is intact: everything is claimed, normal before low.
        order = [store.claim_next("w", [EP]).request_id for _ in range(49)]
        assert order == sorted(positions, key=positions.get)
        store.close()
    finally:
        server.stop()


def test_calls_during_a_redis_restart_wait_for_it_and_none_is_lost(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisJobStore(server.url)
        submitted: list[str] = []
        calls: list[tuple[float, float]] = []
        restarted = threading.Event()
        outage: dict[str, float] = {}

        def restart() -> None:
            server.stop()  # SIGTERM: AOF fsynced; the port refuses connections until start() below
            outage["down"] = time.monotonic()
            server.start()
            outage["up"] = time.monotonic()
            restarted.set()

        store.submit(make_job())  # connected before the restart
        restarter = threading.Thread(target=restart)
        restarter.start()
        while not restarted.is_set() or len(submitted) < 20:  # submits keep going through the outage
            t0 = time.monotonic()
            submitted.append(store.submit(make_job()).request_id)
            calls.append((t0, time.monotonic()))
        restarter.join(30)
        # A call was in flight while Redis was down: it waited for it rather than failing.
        assert any(t0 < outage["up"] and t1 > outage["down"] for t0, t1 in calls)
        assert all(store.get(rid) is not None for rid in submitted)
        claimed = {store.claim_next("w", [EP]).request_id for _ in range(len(submitted) + 1)}
        assert set(submitted) <= claimed
        store.close()
    finally:
        server.stop()
