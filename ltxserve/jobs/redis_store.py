"""The Redis job store: API nodes and GPU workers on many hosts share one Redis (7+) or Valkey server.

Key layout, all under one prefix (default `ltx:`):

    job:{rid}        hash: the job's fields (absent field = None); `score` is its place in the queue
    queue            zset rid -> rank * 2**40 + seq (normal rank 0 before low rank 1, FIFO by seq): positions
    queue:{endpoint} the same, per endpoint: what claims pop from
    deadlines        zset rid -> start deadline, queued jobs that have one
    running          hash rid -> worker id, IN_PROGRESS jobs (who holds what; a lost worker's jobs are found here)
    logs:{rid}       list of JSON [message, level, timestamp]
    jobfiles:{rid}   set of the output file ids of a job (they expire with it)
    file:{fid}       hash: a stored file's record
    webhook:{rid}    hash: the delivery (url, body, attempts, ..., the lease of the node delivering it);
                     webhooks:due zset rid -> next attempt time
    expiry           zset "j:{rid}" / "f:{fid}" -> expires_at: what purge_expired deletes (and whose bytes it returns)
    done:ok, done:error, itimes   retained completed jobs (counts, inference times)
    counters         hash: the generation histogram (only grows)
    workers          hash worker id -> JSON {ready, info, seen_at}: heartbeats (a worker's lease on its jobs)
    claim:{token}    the job one claim call took (5 min): the same call retried after a lost reply gets it again
    ch:{rid}         pub/sub channel: a message on every change of the job (state, progress, log, cancel)
    queue-moved      pub/sub channel: a message whenever a job enters or leaves the queue (positions changed)

Transitions are atomic: submit, claim, progress and heartbeats are Lua scripts; completion, cancel and release read
the job under WATCH and apply the rules of jobs/lifecycle.py (the one home of those rules: Lua cannot call Python) in
a MULTI/EXEC that fails and is retried if anything touched the job in between. Completed jobs also get a Redis TTL
(their expiry plus a grace period) on all their keys as a backstop, so Redis never keeps them forever even where no
node runs housekeeping; normally purge_expired deletes them first and hands back the files to delete from disk.

Every change is published (ch:{rid}, queue-moved). An API process subscribes once, on a thread: it keeps the status
answers it has read until their job or the queue ahead of them changes (pollers cost Redis nothing on repeats), and it
wakes the status streams waiting on a job (`changes`; see jobs/changes.py) instead of their polling.

Not for Redis Cluster (scripts touch keys they compute); one Redis or Valkey primary, with AOF for durability.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable

import redis
from redis.backoff import ExponentialBackoff
from redis.client import PubSub
from redis.exceptions import BusyLoadingError, WatchError
from redis.retry import Retry

from ltxserve.jobs.lifecycle import expires_at, final_outcome, release_decision
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.store import (
    GenerationHistogram,
    Job,
    JobStore,
    StoreCounts,
    StoredFile,
    WebhookDelivery,
)
from ltxserve.jobs.webhooks import webhook_body
from ltxserve.protocol import LogEntry, Priority, QueueState

_PRIORITY_RANK = {Priority.NORMAL: 0, Priority.LOW: 1}
_RANK_PRIORITY = {v: k for k, v in _PRIORITY_RANK.items()}
# Completed jobs' keys outlive their expiry by this much, so purge_expired (which deletes them and returns their
# files) normally runs first; the TTL only cleans up after deployments where no node runs housekeeping.
TTL_GRACE_SECONDS = 3600
# A webhook handed out by due_webhooks is not handed to another node for this long (several nodes deliver; one wins).
WEBHOOK_LEASE_SECONDS = 120.0
# Connections per process (the API's thread pool, a worker's threads, housekeeping); more would only queue up inside
# Redis, which runs commands one at a time.
SYNC_CONNECTIONS = 64
# The API's status cache (see _StatusCache): an upper bound on an entry's life, and on the number of entries.
STATUS_CACHE_SECONDS = 2.0
STATUS_CACHE_ENTRIES = 100_000
_STATE_NAMES = frozenset(s.value for s in QueueState)


def _restart_retry() -> Retry:
    """Ride out a Redis restart (reconnect, AOF loading) of up to about RESTART_WINDOW_SECONDS: commands are sent
    again on a new connection. Scripts that change state carry a token so that a command whose reply was lost is not
    applied twice; a transaction whose EXEC may have run is re-read and decided again (WATCH)."""
    # Not on timeouts: a Redis that hangs is an error after socket_timeout, not after that many times over.
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=int(RESTART_WINDOW_SECONDS),
                 supported_errors=(redis.ConnectionError, BusyLoadingError))


RESTART_WINDOW_SECONDS = 20

_SUBMIT = """
local p, rid = ARGV[1], ARGV[2]
local key = p .. 'job:' .. rid
if redis.call('EXISTS', key) == 1 then
  -- The same call sent again after a lost reply (the client retries over a reconnect) is a success.
  if redis.call('HGET', key, 'submit_token') == ARGV[6] then return redis.call('HGET', key, 'seq') end
  return redis.error_reply('duplicate request id ' .. rid)
end
local seq = redis.call('INCR', p .. 'seq')
local score = tonumber(ARGV[3]) * 1099511627776 + seq
redis.call('HSET', key, 'seq', seq, 'score', score, 'submit_token', ARGV[6], unpack(ARGV, 7))
redis.call('ZADD', p .. 'queue', score, rid)
redis.call('ZADD', p .. 'queue:' .. ARGV[4], score, rid)
if ARGV[5] ~= '' then redis.call('ZADD', p .. 'deadlines', ARGV[5], rid) end
redis.call('PUBLISH', p .. 'ch:' .. rid, 'IN_QUEUE')
redis.call('PUBLISH', p .. 'queue-moved', rid)
return seq
"""

# The status hot path in one round trip: the fields a status answer needs and, while queued, the position.
_STATUS = """
local p, rid = ARGV[1], ARGV[2]
local v = redis.call('HMGET', p .. 'job:' .. rid, 'endpoint_id', 'owner', 'app', 'state', 'error', 'error_type',
                     'inference_time')
if not v[4] then return false end
if v[4] == 'IN_QUEUE' then v[8] = redis.call('ZRANK', p .. 'queue', rid) else v[8] = false end
return v
"""

# Claim the first queued job (by score) of these endpoints; queued jobs whose start deadline passed are skipped and
# returned so the caller times them out (its completion applies the lifecycle rules, like every other completion).
_CLAIM = """
local p, worker, now, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
-- The same claim sent again after a lost reply answers the job it claimed the first time.
local prior = redis.call('GET', p .. 'claim:' .. token)
if prior then return {{}, redis.call('HGETALL', p .. 'job:' .. prior)} end
local best, best_score, best_ep = nil, nil, nil
local late = {}
for i = 5, #ARGV do
  local q = p .. 'queue:' .. ARGV[i]
  local offset = 0
  while true do
    local head = redis.call('ZRANGE', q, offset, offset, 'WITHSCORES')
    if #head == 0 then break end
    local rid, score = head[1], tonumber(head[2])
    if best_score and score >= best_score then break end
    local f = redis.call('HMGET', p .. 'job:' .. rid, 'state', 'start_deadline')
    if f[1] ~= 'IN_QUEUE' then
      redis.call('ZREM', q, rid)  -- a stale entry (cannot happen through this store; be safe)
      redis.call('ZREM', p .. 'queue', rid)
    elseif f[2] and tonumber(f[2]) < now then
      table.insert(late, rid)
      offset = offset + 1
    else
      best, best_score, best_ep = rid, score, ARGV[i]
      break
    end
  end
end
if not best then return {late, false} end
local key = p .. 'job:' .. best
redis.call('HSET', key, 'state', 'IN_PROGRESS', 'started_at', ARGV[3], 'worker_id', worker)
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HDEL', key, 'progress')
redis.call('ZREM', p .. 'queue', best)
redis.call('ZREM', p .. 'queue:' .. best_ep, best)
redis.call('ZREM', p .. 'deadlines', best)
redis.call('HSET', p .. 'running', best, worker)
redis.call('SET', p .. 'claim:' .. token, best, 'EX', 300)
redis.call('PUBLISH', p .. 'ch:' .. best, 'IN_PROGRESS')
redis.call('PUBLISH', p .. 'queue-moved', best)
return {late, redis.call('HGETALL', key)}
"""

_SET_PROGRESS = """
local key = ARGV[1] .. 'job:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'progress', ARGV[3])
redis.call('PUBLISH', ARGV[1] .. 'ch:' .. ARGV[2], 'progress')
return 1
"""

# info = COALESCE(new, old), as in the SQLite store.
_HEARTBEAT = """
local key, wid = ARGV[1] .. 'workers', ARGV[2]
local info = cjson.decode(ARGV[4])
if info == cjson.null then
  local old = redis.call('HGET', key, wid)
  if old then info = cjson.decode(old)['info'] end
end
redis.call('HSET', key, wid, cjson.encode({ready = ARGV[3] == '1', info = info, seen_at = tonumber(ARGV[5])}))
return 1
"""

# Hand out due deliveries to this node, skipping those another node holds a lease on (it is delivering them); the
# lease ends after a while, so a node that died mid-delivery does not keep them.
_DUE_WEBHOOKS = """
local p, now, limit, lease, me = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local out, offset = {}, 0
while #out < limit do
  local due = redis.call('ZRANGEBYSCORE', p .. 'webhooks:due', '-inf', now, 'LIMIT', offset, limit)
  if #due == 0 then break end
  offset = offset + #due
  for _, rid in ipairs(due) do
    local key = p .. 'webhook:' .. rid
    local row = redis.call('HGETALL', key)
    if #row == 0 then
      redis.call('ZREM', p .. 'webhooks:due', rid)
      offset = offset - 1
    else
      local holder = redis.call('HMGET', key, 'lease_owner', 'lease_until')
      if (not holder[1]) or holder[1] == me or tonumber(holder[2]) <= now then
        redis.call('HSET', key, 'lease_owner', me, 'lease_until', now + lease)
        if #out < limit then table.insert(out, {rid, row}) end
      end
    end
  end
end
return out
"""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class _Keys:
    """The key names (see the module docstring), under one prefix."""

    def __init__(self, prefix: str):
        self.p = prefix
        self.deadlines = f"{prefix}deadlines"
        self.running = f"{prefix}running"
        self.expiry = f"{prefix}expiry"
        self.webhooks_due = f"{prefix}webhooks:due"
        self.done_ok = f"{prefix}done:ok"
        self.done_error = f"{prefix}done:error"
        self.itimes = f"{prefix}itimes"
        self.counters = f"{prefix}counters"
        self.workers = f"{prefix}workers"
        self.queue_moved = f"{prefix}queue-moved"  # a pub/sub channel

    def job(self, rid: str) -> str:
        return f"{self.p}job:{rid}"

    def logs(self, rid: str) -> str:
        return f"{self.p}logs:{rid}"

    def jobfiles(self, rid: str) -> str:
        return f"{self.p}jobfiles:{rid}"

    def file(self, fid: str) -> str:
        return f"{self.p}file:{fid}"

    def webhook(self, rid: str) -> str:
        return f"{self.p}webhook:{rid}"

    def queue(self, endpoint_id: str | None = None) -> str:
        return f"{self.p}queue" if endpoint_id is None else f"{self.p}queue:{endpoint_id}"

    def channel(self, rid: str) -> str:
        return f"{self.p}ch:{rid}"


class RedisJobStore(JobStore):
    """The JobStore on Redis; `url` as redis-py reads it (redis://host:port/db, rediss://, unix://)."""

    def __init__(self, url: str, *, default_retention_seconds: int = 24 * 3600, prefix: str = "ltx:"):
        self.url = url
        self.default_retention_seconds = default_retention_seconds
        self.k = _Keys(prefix)
        self._node_id = uuid.uuid4().hex  # this store object, as the holder of webhook delivery leases
        # A bounded, blocking pool: a burst of requests waits for a free connection instead of failing (redis-py's
        # default pool raises "Too many connections"); a socket timeout so a hung Redis is an error, not a hang.
        self.r = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=SYNC_CONNECTIONS, timeout=30, decode_responses=True, socket_timeout=10,
            socket_connect_timeout=5, health_check_interval=30, retry=_restart_retry()))
        self._submit = self.r.register_script(_SUBMIT)
        self._status = self.r.register_script(_STATUS)
        self._claim = self.r.register_script(_CLAIM)
        self._progress = self.r.register_script(_SET_PROGRESS)
        self._heartbeat = self.r.register_script(_HEARTBEAT)
        self._due = self.r.register_script(_DUE_WEBHOOKS)
        self._changes: _ChangeListener | None = None  # started by the first status read or change feed (API)
        self._changes_lock = threading.Lock()

    def close(self) -> None:
        if self._changes is not None:
            self._changes.stop()
            self._changes = None
        self.r.close()

    # --- rows -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _job(h: dict[str, str]) -> Job:
        return Job(
            request_id=h["request_id"], endpoint_id=h["endpoint_id"], owner=h["owner"], app=h["app"],
            input=json.loads(h["input"]), state=QueueState(h["state"]),
            priority=_RANK_PRIORITY[int(h["priority_rank"])], created_at=float(h["created_at"]),
            started_at=_float(h.get("started_at")), completed_at=_float(h.get("completed_at")),
            start_deadline=_float(h.get("start_deadline")), webhook_url=h.get("webhook_url"),
            result=_json(h.get("result")), error=h.get("error"), error_type=h.get("error_type"),
            error_body=_json(h.get("error_body")), status_code=int(h.get("status_code", 200)),
            inference_time=_float(h.get("inference_time")), attempts=int(h.get("attempts", 0)),
            worker_id=h.get("worker_id"), cancel_requested=h.get("cancel_requested") == "1",
            retention_seconds=_int(h.get("retention_seconds")), expires_at=_float(h.get("expires_at")),
            sync=h.get("sync") == "1", progress=_json(h.get("progress")),
        )

    @staticmethod
    def _log_entry(message: str, level: str, now: float) -> str:
        return _dumps([message, level, _iso(now)])

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        if not job.created_at:
            job.created_at = time.time()
        job.state = QueueState.IN_QUEUE
        fields: dict[str, Any] = {
            "request_id": job.request_id, "endpoint_id": job.endpoint_id, "owner": job.owner, "app": job.app,
            "input": _dumps(job.input), "state": QueueState.IN_QUEUE.value,
            "priority_rank": _PRIORITY_RANK[Priority(job.priority)], "created_at": repr(job.created_at),
            "attempts": 0, "status_code": 200, "cancel_requested": 0, "sync": int(job.sync),
        }
        for name in ("start_deadline", "webhook_url", "retention_seconds"):
            value = getattr(job, name)
            if value is not None:
                fields[name] = repr(value) if isinstance(value, float) else value
        flat = [str(x) for kv in fields.items() for x in kv]
        deadline = "" if job.start_deadline is None else repr(job.start_deadline)
        self._submit(args=[self.k.p, job.request_id, _PRIORITY_RANK[Priority(job.priority)], job.endpoint_id,
                           deadline, uuid.uuid4().hex, *flat])
        self._changed_here(job.request_id)
        return job

    def get(self, request_id: str) -> Job | None:
        h = self.r.hgetall(self.k.job(request_id))
        return self._job(h) if h else None

    @staticmethod
    def _view(v: list | None) -> Job | None:
        if not v:
            return None
        rid, (endpoint_id, owner, app, state, error, error_type, inference_time, position) = v[0], v[1]
        return Job(request_id=rid, endpoint_id=endpoint_id, owner=owner, app=app, input={}, state=QueueState(state),
                   error=error, error_type=error_type, inference_time=_float(inference_time),
                   progress={"queue_position": int(position)} if position is not None else None)

    def status_view(self, request_id: str) -> Job | None:
        # From this process's cache while the job has not changed (see _StatusCache), else one script call.
        cache = self._listener().cache
        hit = cache.get(request_id)
        if hit is not None:
            return self._view([request_id, hit])
        version = cache.version()
        v = self._status(args=[self.k.p, request_id])
        if v:
            cache.put(request_id, v, version)
        return self._view([request_id, v] if v else None)

    def _changed_here(self, *request_ids: str) -> None:
        """This process changed these jobs (and maybe the queue): its status cache forgets them now, before the
        write's answer goes out, rather than when the published change comes back."""
        if self._changes is not None:
            for rid in request_ids:
                self._changes.cache.changed(rid)
            self._changes.cache.queue_moved()

    def queue_position(self, request_id: str) -> int:
        rank = self.r.zrank(self.k.queue(), request_id)
        return int(rank) if rank is not None else 0

    def claim_next(self, worker_id: str, endpoint_ids: list[str]) -> Job | None:
        if not endpoint_ids:
            return None
        now = time.time()
        late, row = self._claim(args=[self.k.p, worker_id, repr(now), uuid.uuid4().hex, *endpoint_ids])
        job = self._job(dict(zip(row[::2], row[1::2]))) if row else None
        if job is not None:
            self._changed_here(job.request_id)
        for rid in late:
            self._complete(rid, Outcome.timed_out(), only_from=QueueState.IN_QUEUE)
        return job

    def _complete(self, request_id: str, outcome: Outcome, *, only_from: QueueState | None = None,
                  log: tuple[str, str] | None = None, held_by: str | None = None) -> bool:
        """Complete under WATCH: the lifecycle rules decide on what the job holds at this moment."""

        def decide(pipe, f: dict[str, str | None]) -> bool:
            if f["state"] is None or f["state"] == QueueState.COMPLETED.value:
                return False
            if only_from is not None and f["state"] != only_from.value:
                return False
            if held_by is not None and (f["state"] != QueueState.IN_PROGRESS.value or f["worker_id"] != held_by):
                return False  # no longer this worker's job (see JobStore.complete)
            files = pipe.smembers(self.k.jobfiles(request_id))
            pipe.multi()
            if log is not None:
                pipe.rpush(self.k.logs(request_id), self._log_entry(log[0], log[1], time.time()))
            self._write_completion(pipe, request_id, f, outcome, files)
            return True

        done = self._transact(request_id, decide)
        if done:
            self._changed_here(request_id)
        return done

    def _transact(self, request_id: str, decide: Callable[[Any, dict[str, str | None]], Any]) -> Any:
        """Run `decide(pipe, fields)` on the job's fields read under WATCH; it queues its writes after
        pipe.multi() (or returns without); retried from the read whenever the job changed before EXEC."""
        key = self.k.job(request_id)
        names = ("state", "cancel_requested", "retention_seconds", "webhook_url", "endpoint_id", "attempts",
                 "worker_id", "score", "start_deadline")
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, self.k.jobfiles(request_id))
                    fields = dict(zip(names, pipe.hmget(key, names)))
                    answer = decide(pipe, fields)
                    if pipe.explicit_transaction:
                        pipe.execute()
                    else:
                        pipe.unwatch()
                    return answer
                except WatchError:
                    continue

    def _write_completion(self, pipe, rid: str, f: dict[str, str | None], outcome: Outcome, files: set[str]) -> None:
        now = time.time()
        outcome = final_outcome(outcome, f["cancel_requested"] == "1")
        expiry = expires_at(now, _int(f["retention_seconds"]), self.default_retention_seconds)
        fields: dict[str, Any] = {"state": QueueState.COMPLETED.value, "completed_at": repr(now),
                                  "expires_at": repr(expiry), "status_code": outcome.status_code}
        for name in ("error", "error_type"):
            if getattr(outcome, name) is not None:
                fields[name] = getattr(outcome, name)
        if outcome.result is not None:
            fields["result"] = _dumps(outcome.result)
        if outcome.error_body is not None:
            fields["error_body"] = _dumps(outcome.error_body)
        if outcome.inference_time is not None:
            fields["inference_time"] = repr(float(outcome.inference_time))
        key = self.k.job(rid)
        pipe.hset(key, mapping=fields)
        pipe.zrem(self.k.queue(), rid)
        pipe.zrem(self.k.queue(f["endpoint_id"]), rid)
        pipe.zrem(self.k.deadlines, rid)
        pipe.hdel(self.k.running, rid)
        pipe.sadd(self.k.done_error if outcome.is_error else self.k.done_ok, rid)
        if outcome.inference_time is not None:
            pipe.hset(self.k.itimes, rid, repr(float(outcome.inference_time)))
            self._observe_generation(pipe, float(outcome.inference_time))
        pipe.zadd(self.k.expiry, {f"j:{rid}": expiry})
        ttl_at = int(expiry + TTL_GRACE_SECONDS)
        for fid in files:  # output files live as long as the job that made them
            pipe.hset(self.k.file(fid), "expires_at", repr(expiry))
            pipe.zadd(self.k.expiry, {f"f:{fid}": expiry})
            pipe.expireat(self.k.file(fid), ttl_at)
        if f["webhook_url"]:
            body = webhook_body(Job(request_id=rid, endpoint_id="", owner="", app="", input={},
                                    result=outcome.result, error=outcome.error, error_type=outcome.error_type,
                                    error_body=outcome.error_body, status_code=outcome.status_code))
            pipe.hset(self.k.webhook(rid), mapping={"url": f["webhook_url"], "body": body, "attempts": 0,
                                                    "next_attempt_at": repr(now), "gave_up": 0})
            pipe.zadd(self.k.webhooks_due, {rid: now})
            pipe.expireat(self.k.webhook(rid), ttl_at)
        for k in (key, self.k.logs(rid), self.k.jobfiles(rid)):
            pipe.expireat(k, ttl_at)
        pipe.publish(self.k.channel(rid), QueueState.COMPLETED.value)
        if f["state"] == QueueState.IN_QUEUE.value:
            pipe.publish(self.k.queue_moved, rid)

    def complete(self, request_id: str, outcome: Outcome, *, worker_id: str | None = None) -> bool:
        return self._complete(request_id, outcome, held_by=worker_id)

    def request_cancel(self, request_id: str) -> str:
        def decide(pipe, f: dict[str, str | None]) -> str:
            state = f["state"]
            if state is None:
                return "NOT_FOUND"
            if state == QueueState.COMPLETED.value:
                return "ALREADY_COMPLETED"
            if state == QueueState.IN_QUEUE.value:
                files = pipe.smembers(self.k.jobfiles(request_id))
                pipe.multi()
                self._write_completion(pipe, request_id, f, Outcome.cancelled(), files)
            else:
                pipe.multi()
                pipe.hset(self.k.job(request_id), "cancel_requested", 1)
                pipe.publish(self.k.channel(request_id), "cancel")
            return "CANCELLATION_REQUESTED"

        answer = self._transact(request_id, decide)
        self._changed_here(request_id)
        return answer

    def is_cancel_requested(self, request_id: str) -> bool:
        return self.r.hget(self.k.job(request_id), "cancel_requested") == "1"

    def set_progress(self, request_id: str, step: int, total: int, stage: str) -> None:
        self._progress(args=[self.k.p, request_id, _dumps({"step": step, "total": total, "stage": stage})])

    def release_worker_jobs(self, worker_id: str, reason: str, max_attempts: int) -> list[str]:
        affected = []
        for rid, holder in self.r.hgetall(self.k.running).items():
            if holder == worker_id and self._release(rid, worker_id, reason, max_attempts):
                affected.append(rid)
        self.r.hdel(self.k.workers, worker_id)
        return affected

    def held_jobs(self, worker_id: str) -> list[str]:
        return sorted(rid for rid, holder in self.r.hgetall(self.k.running).items() if holder == worker_id)

    def release_job(self, request_id: str, worker_id: str, reason: str, max_attempts: int) -> bool:
        return self._release(request_id, worker_id, reason, max_attempts)

    def _release(self, rid: str, worker_id: str, reason: str, max_attempts: int) -> bool:
        def decide(pipe, f: dict[str, str | None]) -> bool:
            if f["state"] != QueueState.IN_PROGRESS.value or f["worker_id"] != worker_id:
                if f["state"] != QueueState.IN_PROGRESS.value:
                    pipe.multi()
                    pipe.hdel(self.k.running, rid)  # a stale entry
                return False
            decision = release_decision(int(f["attempts"] or 0), max_attempts, f["cancel_requested"] == "1", reason)
            files = pipe.smembers(self.k.jobfiles(rid))
            pipe.multi()
            pipe.rpush(self.k.logs(rid), self._log_entry(decision.log_message, decision.log_level, time.time()))
            if decision.retry:  # back in its place by submission order
                score = float(f["score"])
                pipe.hset(self.k.job(rid), "state", QueueState.IN_QUEUE.value)
                pipe.hdel(self.k.job(rid), "worker_id", "started_at", "progress")
                pipe.zadd(self.k.queue(), {rid: score})
                pipe.zadd(self.k.queue(f["endpoint_id"]), {rid: score})
                if f["start_deadline"] is not None:
                    pipe.zadd(self.k.deadlines, {rid: float(f["start_deadline"])})
                pipe.hdel(self.k.running, rid)
                pipe.publish(self.k.channel(rid), QueueState.IN_QUEUE.value)
                pipe.publish(self.k.queue_moved, rid)
            else:
                self._write_completion(pipe, rid, f, decision.outcome, files)
            return True

        released = self._transact(rid, decide)
        if released:
            self._changed_here(rid)
        return released

    def in_progress_workers(self) -> list[str]:
        return sorted(set(self.r.hvals(self.k.running)))

    def expire_start_deadlines(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        late = self.r.zrangebyscore(self.k.deadlines, "-inf", f"({now!r}")
        return [rid for rid in late if self._complete(rid, Outcome.timed_out(), only_from=QueueState.IN_QUEUE)]

    # --- logs -----------------------------------------------------------------------------------------------------
    def append_log(self, request_id: str, message: str, level: str = "INFO") -> None:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.rpush(self.k.logs(request_id), self._log_entry(message, level, time.time()))
            pipe.publish(self.k.channel(request_id), "log")
            pipe.execute()

    def logs(self, request_id: str) -> list[LogEntry]:
        rows = [json.loads(x) for x in self.r.lrange(self.k.logs(request_id), 0, -1)]
        return [LogEntry(message=m, level=lv, timestamp=ts) for m, lv, ts in rows]

    # --- files ----------------------------------------------------------------------------------------------------
    def add_file(self, f: StoredFile) -> None:
        fields: dict[str, Any] = {"file_id": f.file_id, "path": f.path, "content_type": f.content_type,
                                  "file_name": f.file_name, "file_size": f.file_size,
                                  "created_at": repr(f.created_at or time.time()), "complete": int(f.complete)}
        if f.expires_at is not None:
            fields["expires_at"] = repr(f.expires_at)
        if f.request_id is not None:
            fields["request_id"] = f.request_id
        with self.r.pipeline() as pipe:
            pipe.hset(self.k.file(f.file_id), mapping=fields)
            if f.expires_at is not None:
                pipe.zadd(self.k.expiry, {f"f:{f.file_id}": f.expires_at})
                pipe.expireat(self.k.file(f.file_id), int(f.expires_at + TTL_GRACE_SECONDS))
            if f.request_id is not None:
                pipe.sadd(self.k.jobfiles(f.request_id), f.file_id)
            pipe.execute()

    @staticmethod
    def _file(h: dict[str, str]) -> StoredFile:
        return StoredFile(
            file_id=h["file_id"], path=h["path"], content_type=h["content_type"], file_name=h["file_name"],
            file_size=int(h["file_size"]), created_at=float(h["created_at"]), expires_at=_float(h.get("expires_at")),
            request_id=h.get("request_id"), complete=h.get("complete") == "1",
        )

    def get_file(self, file_id: str) -> StoredFile | None:
        h = self.r.hgetall(self.k.file(file_id))
        return self._file(h) if h.get("file_id") else None

    def mark_file_complete(self, file_id: str, file_size: int) -> None:
        self._update_if_exists(self.k.file(file_id),
                               lambda pipe: pipe.hset(self.k.file(file_id),
                                                      mapping={"complete": 1, "file_size": file_size}))

    def _update_if_exists(self, key: str, write: Callable[[Any], Any]) -> None:
        """Queue `write(pipe)`'s commands and run them atomically, only while `key` exists: no half-record is
        written for something deleted (purged) meanwhile."""
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if not pipe.exists(key):
                        pipe.unwatch()
                        return
                    pipe.multi()
                    write(pipe)
                    pipe.execute()
                    return
                except WatchError:
                    continue

    # --- webhooks -------------------------------------------------------------------------------------------------
    @staticmethod
    def _delivery(rid: str, h: dict[str, str]) -> WebhookDelivery:
        return WebhookDelivery(
            request_id=rid, url=h["url"], body=h["body"].encode(), attempts=int(h.get("attempts", 0)),
            next_attempt_at=float(h["next_attempt_at"]), delivered_at=_float(h.get("delivered_at")),
            last_error=h.get("last_error"), gave_up=h.get("gave_up") == "1",
        )

    def due_webhooks(self, now: float | None = None, limit: int = 20) -> list[WebhookDelivery]:
        now = time.time() if now is None else now
        rows = self._due(args=[self.k.p, repr(now), limit, WEBHOOK_LEASE_SECONDS, self._node_id])
        out = []
        for rid, row in rows:
            out.append(self._delivery(rid, dict(zip(row[::2], row[1::2]))))
        return out

    def record_webhook_attempt(
        self, request_id: str, *, ok: bool, error: str | None, next_attempt_at: float | None
    ) -> None:
        key = self.k.webhook(request_id)

        def write(pipe) -> None:
            pipe.hincrby(key, "attempts", 1)
            pipe.hdel(key, "lease_owner", "lease_until")
            if ok:
                pipe.hset(key, "delivered_at", repr(time.time()))
                pipe.hdel(key, "last_error")
                pipe.zrem(self.k.webhooks_due, request_id)
            elif next_attempt_at is None:
                pipe.hset(key, mapping={"gave_up": 1, "last_error": error or ""})
                pipe.zrem(self.k.webhooks_due, request_id)
            else:
                pipe.hset(key, mapping={"next_attempt_at": repr(next_attempt_at), "last_error": error or ""})
                pipe.zadd(self.k.webhooks_due, {request_id: next_attempt_at})

        self._update_if_exists(key, write)

    def webhook(self, request_id: str) -> WebhookDelivery | None:
        h = self.r.hgetall(self.k.webhook(request_id))
        return self._delivery(request_id, h) if h.get("url") else None

    # --- housekeeping and metrics ---------------------------------------------------------------------------------
    def purge_expired(self, now: float | None = None) -> list[StoredFile]:
        now = time.time() if now is None else now
        members = self.r.zrangebyscore(self.k.expiry, "-inf", repr(now))
        files: dict[str, StoredFile] = {}
        for member in members:
            kind, ident = member.split(":", 1)
            fids = [ident] if kind == "f" else list(self.r.smembers(self.k.jobfiles(ident)))
            for fid in fids:
                h = self.r.hgetall(self.k.file(fid))
                if h.get("file_id"):
                    files[fid] = self._file(h)
            with self.r.pipeline() as pipe:
                for fid in fids:
                    pipe.delete(self.k.file(fid))
                    pipe.zrem(self.k.expiry, f"f:{fid}")
                if kind == "j":
                    pipe.delete(self.k.job(ident), self.k.logs(ident), self.k.jobfiles(ident),
                                self.k.webhook(ident))
                    pipe.zrem(self.k.webhooks_due, ident)
                    pipe.srem(self.k.done_ok, ident)
                    pipe.srem(self.k.done_error, ident)
                    pipe.hdel(self.k.itimes, ident)
                pipe.zrem(self.k.expiry, member)
                pipe.execute()
        return list(files.values())

    def counts(self) -> StoreCounts:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zcard(self.k.queue())
            pipe.hlen(self.k.running)
            pipe.scard(self.k.done_ok)
            pipe.scard(self.k.done_error)
            queued, running, ok, failed = pipe.execute()
        return StoreCounts(in_queue=queued, in_progress=running, completed_ok=ok, completed_error=failed)

    def _observe_generation(self, pipe, seconds: float) -> None:
        for name, amount in GenerationHistogram.increments(seconds):
            pipe.hincrbyfloat(self.k.counters, name, amount)

    def generation_histogram(self) -> GenerationHistogram:
        return GenerationHistogram.from_counters({k: float(v) for k, v in self.r.hgetall(self.k.counters).items()})

    def inference_times(self) -> list[float]:
        return [float(v) for v in self.r.hvals(self.k.itimes)]

    # --- workers --------------------------------------------------------------------------------------------------
    def heartbeat(self, worker_id: str, *, ready: bool, info: dict[str, Any] | None = None) -> None:
        self._heartbeat(args=[self.k.p, worker_id, int(ready), _dumps(info), repr(time.time())])

    def live_workers(self, max_age_seconds: float) -> list[dict[str, Any]]:
        since = time.time() - max_age_seconds
        out = []
        for wid, raw in self.r.hgetall(self.k.workers).items():
            row = json.loads(raw)
            if row["seen_at"] >= since:
                info = row.get("info")
                out.append({"worker_id": wid, "ready": bool(row["ready"]),
                            "info": info if isinstance(info, dict) else None, "seen_at": row["seen_at"]})
        return out

    def forget_worker(self, worker_id: str) -> None:
        self.r.hdel(self.k.workers, worker_id)

    # --- change notification (the status stream waits on these instead of polling) -------------------------------
    @asynccontextmanager
    async def changes(self, request_id: str) -> AsyncIterator["ChangeFeed"]:
        """A feed that wakes on every change of the job (published by every transition); see jobs/changes.py."""
        listener = self._listener()
        if not listener.subscribed.is_set():
            await asyncio.to_thread(listener.subscribed.wait, 10)
        feed = ChangeFeed(asyncio.get_running_loop())
        listener.add(request_id, feed)
        try:
            yield feed
        finally:
            listener.remove(request_id, feed)

    def _listener(self) -> "_ChangeListener":
        if self._changes is None:
            with self._changes_lock:
                if self._changes is None:
                    self._changes = _ChangeListener(self.url, self.k)
        return self._changes


class ChangeFeed:
    """Set when the job changed since the last wait; notified from the listener thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # its loop has closed: nobody waits any more
            pass

    async def wait(self, timeout: float) -> bool:
        """True when something changed (now or within `timeout` seconds); clears the mark."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self._event.clear()
        return True


class _StatusCache:
    """Status views this API process read, kept until the job changes (or, while queued, until the queue moves):
    pollers are answered from memory, and the listener drops entries as the changes are published.

    Only while the listener is subscribed (a lost subscription empties it and turns it off until resubscribed);
    entries also expire after STATUS_CACHE_SECONDS as a bound. A read that overlapped any change is not kept."""

    def __init__(self):
        self._lock = threading.Lock()
        self._views: dict[str, tuple[list, float]] = {}
        self._queued: set[str] = set()
        self._version = 0
        self.live = False

    def get(self, rid: str) -> list | None:
        hit = self._views.get(rid)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def version(self) -> int:
        return self._version

    def put(self, rid: str, view: list, version: int) -> None:
        with self._lock:
            if not self.live or version != self._version:
                return
            if len(self._views) >= STATUS_CACHE_ENTRIES:
                self._views.clear()
                self._queued.clear()
            self._views[rid] = (view, time.monotonic() + STATUS_CACHE_SECONDS)
            if view[3] == QueueState.IN_QUEUE.value:
                self._queued.add(rid)

    def changed(self, rid: str) -> None:
        with self._lock:
            self._version += 1
            self._views.pop(rid, None)
            self._queued.discard(rid)

    def queue_moved(self) -> None:
        with self._lock:
            self._version += 1
            for rid in self._queued:
                self._views.pop(rid, None)
            self._queued.clear()

    def reset(self, live: bool) -> None:
        with self._lock:
            self._version += 1
            self._views.clear()
            self._queued.clear()
            self.live = live


class _ChangeListener:
    """One thread per process subscribed to every job's channel and to queue moves: it keeps the status cache true
    and wakes the change feeds (status streams) of this process."""

    def __init__(self, url: str, keys: _Keys):
        self.prefix = keys.channel("")
        self.queue_channel = keys.queue_moved
        self.cache = _StatusCache()
        self.subscribed = threading.Event()
        self._feeds: dict[str, set[ChangeFeed]] = {}
        self._feeds_lock = threading.Lock()
        # Its own connection: no read timeout (it may be quiet for hours), health-checked with PINGs instead.
        self._client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                            health_check_interval=15)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-changes", daemon=True)
        self._thread.start()

    def add(self, rid: str, feed: ChangeFeed) -> None:
        with self._feeds_lock:
            self._feeds.setdefault(rid, set()).add(feed)

    def remove(self, rid: str, feed: ChangeFeed) -> None:
        with self._feeds_lock:
            feeds = self._feeds.get(rid)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del self._feeds[rid]

    def _wake(self, rid: str | None = None) -> None:
        with self._feeds_lock:
            feeds = list(self._feeds.get(rid, ())) if rid is not None else [
                f for group in self._feeds.values() for f in group]
        for feed in feeds:
            feed.notify()

    def _lost(self) -> None:
        """Messages may have been missed: distrust the cache until subscribed again; every stream re-reads."""
        self.subscribed.clear()
        self.cache.reset(live=False)
        self._wake()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = _NoticingPubSub(self._client.connection_pool, on_reconnect=self._lost)
            try:
                pubsub.psubscribe(self.prefix + "*")
                pubsub.subscribe(self.queue_channel)
                confirmed = 0
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind in ("psubscribe", "subscribe"):
                        confirmed += 1
                        if confirmed % 2 == 0:  # both subscriptions (again, after a reconnect) are in place
                            self.cache.reset(live=True)
                            self.subscribed.set()
                            self._wake()  # whatever changed before now is re-read
                    elif kind == "pmessage":
                        rid = message["channel"][len(self.prefix):]
                        if message["data"] in _STATE_NAMES:
                            self.cache.changed(rid)
                        self._wake(rid)
                    elif kind == "message":  # the queue moved: queued jobs' positions changed
                        self.cache.queue_moved()
                        self._wake()
            except Exception:  # Redis restarted or unreachable: try again shortly
                self._lost()
                self._stop.wait(0.5)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self._client.close()


class _NoticingPubSub(PubSub):
    """redis-py's PubSub reconnects and resubscribes by itself; this one also says so (messages may be lost)."""

    def __init__(self, pool, *, on_reconnect):
        super().__init__(pool)
        self._on_reconnect = on_reconnect

    def on_connect(self, connection) -> None:  # called on reconnects only (the first connect precedes the callback)
        self._on_reconnect()
        super().on_connect(connection)
