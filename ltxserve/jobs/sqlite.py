"""The embedded job store: one SQLite file in WAL mode, shared by the API process and the worker processes.

Every transition is one short transaction; claims take the write lock up front (BEGIN IMMEDIATE) so two workers never
claim the same job. Hot reads (status polling) are single indexed lookups on a per-thread connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from contextlib import contextmanager

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    endpoint_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    app TEXT NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,      -- 0 normal, 1 low: claimed in (priority_rank, seq) order
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    start_deadline REAL,
    webhook_url TEXT,
    result TEXT,
    error TEXT,
    error_type TEXT,
    error_body TEXT,
    status_code INTEGER NOT NULL DEFAULT 200,
    inference_time REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    retention_seconds INTEGER,
    expires_at REAL,
    sync INTEGER NOT NULL DEFAULT 0,
    progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority_rank, seq);
CREATE INDEX IF NOT EXISTS jobs_worker ON jobs (worker_id, state);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    message TEXT NOT NULL,
    level TEXT NOT NULL,
    timestamp TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_request ON logs (request_id, id);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    content_type TEXT NOT NULL,
    file_name TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    request_id TEXT,
    complete INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS files_request ON files (request_id);
CREATE INDEX IF NOT EXISTS files_expiry ON files (expires_at);
CREATE TABLE IF NOT EXISTS webhooks (
    request_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    delivered_at REAL,
    last_error TEXT,
    gave_up INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (delivered_at, gave_up, next_attempt_at);
-- Counters that only grow (Prometheus semantics): observed when a job completes, never rebuilt from retained jobs.
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    ready INTEGER NOT NULL,
    info TEXT,
    seen_at REAL NOT NULL
);
"""

_PRIORITY_RANK = {Priority.NORMAL: 0, Priority.LOW: 1}
_RANK_PRIORITY = {v: k for k, v in _PRIORITY_RANK.items()}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class SqliteJobStore(JobStore):
    def __init__(self, path: Path | str, *, default_retention_seconds: int = 24 * 3600):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.default_retention_seconds = default_retention_seconds
        self._local = threading.local()
        self._db().executescript(SCHEMA)  # idempotent; executescript manages its own transaction

    # --- connections ----------------------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # --- rows -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            request_id=row["request_id"],
            endpoint_id=row["endpoint_id"],
            owner=row["owner"],
            app=row["app"],
            input=json.loads(row["input"]),
            state=QueueState(row["state"]),
            priority=_RANK_PRIORITY[row["priority_rank"]],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            start_deadline=row["start_deadline"],
            webhook_url=row["webhook_url"],
            result=_loads(row["result"]),
            error=row["error"],
            error_type=row["error_type"],
            error_body=_loads(row["error_body"]),
            status_code=row["status_code"],
            inference_time=row["inference_time"],
            attempts=row["attempts"],
            worker_id=row["worker_id"],
            cancel_requested=bool(row["cancel_requested"]),
            retention_seconds=row["retention_seconds"],
            expires_at=row["expires_at"],
            sync=bool(row["sync"]),
            progress=_loads(row["progress"]),
        )

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        if not job.created_at:
            job.created_at = time.time()
        job.state = QueueState.IN_QUEUE
        with self._tx(immediate=True) as db:
            db.execute(
                "INSERT INTO jobs (request_id, endpoint_id, owner, app, input, state, priority_rank, created_at,"
                " start_deadline, webhook_url, retention_seconds, sync) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.request_id, job.endpoint_id, job.owner, job.app, json.dumps(job.input),
                    QueueState.IN_QUEUE.value, _PRIORITY_RANK[Priority(job.priority)], job.created_at,
                    job.start_deadline, job.webhook_url, job.retention_seconds, int(job.sync),
                ),
            )
        return job

    def get(self, request_id: str) -> Job | None:
        row = self._db().execute("SELECT * FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else self._job(row)

    def status_view(self, request_id: str) -> Job | None:
        row = self._db().execute(
            "SELECT j.request_id, j.endpoint_id, j.owner, j.app, j.state, j.error, j.error_type, j.inference_time,"
            " CASE WHEN j.state = 'IN_QUEUE' THEN (SELECT COUNT(*) FROM jobs q WHERE q.state = 'IN_QUEUE' AND"
            "  (q.priority_rank < j.priority_rank OR (q.priority_rank = j.priority_rank AND q.seq < j.seq)))"
            " END AS position FROM jobs j WHERE j.request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        return Job(
            request_id=row[0], endpoint_id=row[1], owner=row[2], app=row[3], input={}, state=QueueState(row[4]),
            error=row[5], error_type=row[6], inference_time=row[7],
            progress={"queue_position": row[8]} if row[8] is not None else None,
        )

    def queue_position(self, request_id: str) -> int:
        db = self._db()
        row = db.execute(
            "SELECT seq, priority_rank, state FROM jobs WHERE request_id = ?", (request_id,)
        ).fetchone()
        if row is None or row["state"] != QueueState.IN_QUEUE.value:
            return 0
        ahead = db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'IN_QUEUE' AND"
            " (priority_rank < ? OR (priority_rank = ? AND seq < ?))",
            (row["priority_rank"], row["priority_rank"], row["seq"]),
        ).fetchone()[0]
        return int(ahead)

    def claim_next(self, worker_id: str, endpoint_ids: list[str]) -> Job | None:
        if not endpoint_ids:
            return None
        now = time.time()
        marks = ",".join("?" * len(endpoint_ids))
        with self._tx(immediate=True) as db:
            while True:
                row = db.execute(
                    f"SELECT * FROM jobs WHERE state = 'IN_QUEUE' AND endpoint_id IN ({marks})"
                    " ORDER BY priority_rank, seq LIMIT 1",
                    endpoint_ids,
                ).fetchone()
                if row is None:
                    return None
                if row["start_deadline"] is not None and row["start_deadline"] < now:
                    self._complete_timed_out(db, row["request_id"], now)
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'IN_PROGRESS', started_at = ?, worker_id = ?, attempts = attempts + 1,"
                    " progress = NULL WHERE request_id = ?",
                    (now, worker_id, row["request_id"]),
                )
                job = self._job(row)
                job.state, job.started_at, job.worker_id, job.attempts = (
                    QueueState.IN_PROGRESS, now, worker_id, job.attempts + 1)
                return job

    def _complete_timed_out(self, db: sqlite3.Connection, request_id: str, now: float) -> None:
        self._complete_in(db, request_id, now, Outcome.timed_out())

    def _complete_in(self, db: sqlite3.Connection, request_id: str, now: float, outcome: Outcome,
                     worker_id: str | None = None) -> bool:
        row = db.execute(
            "SELECT state, retention_seconds, cancel_requested, worker_id FROM jobs WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None or row["state"] == QueueState.COMPLETED.value:
            return False
        if worker_id is not None and (row["state"] != QueueState.IN_PROGRESS.value or row["worker_id"] != worker_id):
            return False  # no longer this worker's job (see JobStore.complete)
        # Same transaction as the check in request_cancel, so a cancel answered 202 and a late result never both win.
        outcome = final_outcome(outcome, bool(row["cancel_requested"]))
        expiry = expires_at(now, row["retention_seconds"], self.default_retention_seconds)
        db.execute(
            "UPDATE jobs SET state = 'COMPLETED', completed_at = ?, result = ?, error = ?, error_type = ?,"
            " error_body = ?, status_code = ?, inference_time = ?, expires_at = ? WHERE request_id = ?",
            (now, _dumps(outcome.result), outcome.error, outcome.error_type, _dumps(outcome.error_body),
             outcome.status_code, outcome.inference_time, expiry, request_id),
        )
        if outcome.inference_time is not None:
            self._observe_generation(db, outcome.inference_time)
        # Output files live as long as the job that made them.
        db.execute("UPDATE files SET expires_at = ? WHERE request_id = ?", (expiry, request_id))
        full = db.execute("SELECT * FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        job = self._job(full)
        if job.webhook_url:
            db.execute(
                "INSERT OR IGNORE INTO webhooks (request_id, url, body, next_attempt_at) VALUES (?,?,?,?)",
                (request_id, job.webhook_url, webhook_body(job), now),
            )
        return True

    def complete(self, request_id: str, outcome: Outcome, *, worker_id: str | None = None) -> bool:
        with self._tx(immediate=True) as db:
            return self._complete_in(db, request_id, time.time(), outcome, worker_id)

    def request_cancel(self, request_id: str) -> str:
        with self._tx(immediate=True) as db:
            row = db.execute("SELECT state FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                return "NOT_FOUND"
            state = row["state"]
            if state == QueueState.COMPLETED.value:
                return "ALREADY_COMPLETED"
            if state == QueueState.IN_QUEUE.value:
                self._complete_in(db, request_id, time.time(), Outcome.cancelled())
            else:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE request_id = ?", (request_id,))
            return "CANCELLATION_REQUESTED"

    def is_cancel_requested(self, request_id: str) -> bool:
        row = self._db().execute(
            "SELECT cancel_requested FROM jobs WHERE request_id = ?", (request_id,)
        ).fetchone()
        return bool(row and row[0])

    def set_progress(self, request_id: str, step: int, total: int, stage: str) -> None:
        with self._tx(immediate=True) as db:
            db.execute(
                "UPDATE jobs SET progress = ? WHERE request_id = ?",
                (_dumps({"step": step, "total": total, "stage": stage}), request_id),
            )

    def release_worker_jobs(self, worker_id: str, reason: str, max_attempts: int) -> list[str]:
        now = time.time()
        affected = []
        with self._tx(immediate=True) as db:
            rows = db.execute(
                "SELECT request_id, attempts, cancel_requested FROM jobs"
                " WHERE worker_id = ? AND state = 'IN_PROGRESS'",
                (worker_id,),
            ).fetchall()
            for row in rows:
                affected.append(row["request_id"])
                self._release_in(db, row, reason, max_attempts, now)
            db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
        return affected

    def _release_in(self, db: sqlite3.Connection, row: sqlite3.Row, reason: str, max_attempts: int,
                    now: float) -> None:
        rid = row["request_id"]
        decision = release_decision(row["attempts"], max_attempts, bool(row["cancel_requested"]), reason)
        self._append_log_in(db, rid, decision.log_message, decision.log_level, now)
        if decision.retry:
            db.execute(
                "UPDATE jobs SET state = 'IN_QUEUE', worker_id = NULL, started_at = NULL, progress = NULL"
                " WHERE request_id = ?",
                (rid,),
            )
        else:
            self._complete_in(db, rid, now, decision.outcome)

    def held_jobs(self, worker_id: str) -> list[str]:
        rows = self._db().execute(
            "SELECT request_id FROM jobs WHERE worker_id = ? AND state = 'IN_PROGRESS' ORDER BY seq", (worker_id,)
        ).fetchall()
        return [r[0] for r in rows]

    def release_job(self, request_id: str, worker_id: str, reason: str, max_attempts: int) -> bool:
        with self._tx(immediate=True) as db:
            row = db.execute(
                "SELECT request_id, attempts, cancel_requested FROM jobs"
                " WHERE request_id = ? AND worker_id = ? AND state = 'IN_PROGRESS'",
                (request_id, worker_id),
            ).fetchone()
            if row is None:
                return False
            self._release_in(db, row, reason, max_attempts, time.time())
            return True

    def in_progress_workers(self) -> list[str]:
        rows = self._db().execute(
            "SELECT DISTINCT worker_id FROM jobs WHERE state = 'IN_PROGRESS' AND worker_id IS NOT NULL"
        ).fetchall()
        return [r[0] for r in rows]

    def expire_start_deadlines(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        with self._tx(immediate=True) as db:
            rows = db.execute(
                "SELECT request_id FROM jobs WHERE state = 'IN_QUEUE' AND start_deadline IS NOT NULL"
                " AND start_deadline < ?",
                (now,),
            ).fetchall()
            for row in rows:
                self._complete_timed_out(db, row[0], now)
        return [r[0] for r in rows]

    # --- logs -----------------------------------------------------------------------------------------------------
    def _append_log_in(self, db: sqlite3.Connection, request_id: str, message: str, level: str, now: float) -> None:
        db.execute(
            "INSERT INTO logs (request_id, message, level, timestamp) VALUES (?,?,?,?)",
            (request_id, message, level, _iso(now)),
        )

    def append_log(self, request_id: str, message: str, level: str = "INFO") -> None:
        with self._tx(immediate=True) as db:
            self._append_log_in(db, request_id, message, level, time.time())

    def logs(self, request_id: str) -> list[LogEntry]:
        rows = self._db().execute(
            "SELECT message, level, timestamp FROM logs WHERE request_id = ? ORDER BY id", (request_id,)
        ).fetchall()
        return [LogEntry(message=r[0], level=r[1], timestamp=r[2]) for r in rows]

    # --- files ----------------------------------------------------------------------------------------------------
    def add_file(self, f: StoredFile) -> None:
        with self._tx(immediate=True) as db:
            db.execute(
                "INSERT INTO files (file_id, path, content_type, file_name, file_size, created_at, expires_at,"
                " request_id, complete) VALUES (?,?,?,?,?,?,?,?,?)",
                (f.file_id, f.path, f.content_type, f.file_name, f.file_size, f.created_at or time.time(),
                 f.expires_at, f.request_id, int(f.complete)),
            )

    def get_file(self, file_id: str) -> StoredFile | None:
        row = self._db().execute("SELECT * FROM files WHERE file_id = ?", (file_id,)).fetchone()
        if row is None:
            return None
        return StoredFile(
            file_id=row["file_id"], path=row["path"], content_type=row["content_type"], file_name=row["file_name"],
            file_size=row["file_size"], created_at=row["created_at"], expires_at=row["expires_at"],
            request_id=row["request_id"], complete=bool(row["complete"]),
        )

    def mark_file_complete(self, file_id: str, file_size: int) -> None:
        with self._tx(immediate=True) as db:
            db.execute("UPDATE files SET complete = 1, file_size = ? WHERE file_id = ?", (file_size, file_id))

    # --- webhooks -------------------------------------------------------------------------------------------------
    @staticmethod
    def _delivery(row: sqlite3.Row) -> WebhookDelivery:
        return WebhookDelivery(
            request_id=row["request_id"], url=row["url"], body=bytes(row["body"]), attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"], delivered_at=row["delivered_at"], last_error=row["last_error"],
            gave_up=bool(row["gave_up"]),
        )

    def due_webhooks(self, now: float | None = None, limit: int = 20) -> list[WebhookDelivery]:
        now = time.time() if now is None else now
        rows = self._db().execute(
            "SELECT * FROM webhooks WHERE delivered_at IS NULL AND gave_up = 0 AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [self._delivery(r) for r in rows]

    def record_webhook_attempt(
        self, request_id: str, *, ok: bool, error: str | None, next_attempt_at: float | None
    ) -> None:
        now = time.time()
        with self._tx(immediate=True) as db:
            if ok:
                db.execute(
                    "UPDATE webhooks SET attempts = attempts + 1, delivered_at = ?, last_error = NULL"
                    " WHERE request_id = ?",
                    (now, request_id),
                )
            elif next_attempt_at is None:
                db.execute(
                    "UPDATE webhooks SET attempts = attempts + 1, gave_up = 1, last_error = ? WHERE request_id = ?",
                    (error, request_id),
                )
            else:
                db.execute(
                    "UPDATE webhooks SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                    " WHERE request_id = ?",
                    (next_attempt_at, error, request_id),
                )

    def webhook(self, request_id: str) -> WebhookDelivery | None:
        row = self._db().execute("SELECT * FROM webhooks WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else self._delivery(row)

    # --- housekeeping ---------------------------------------------------------------------------------------------
    def purge_expired(self, now: float | None = None) -> list[StoredFile]:
        now = time.time() if now is None else now
        with self._tx(immediate=True) as db:
            expired = [
                r[0] for r in db.execute(
                    "SELECT request_id FROM jobs WHERE state = 'COMPLETED' AND expires_at IS NOT NULL"
                    " AND expires_at <= ?", (now,)
                ).fetchall()
            ]
            file_rows = db.execute(
                "SELECT file_id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).fetchall()
            files = [self.get_file(r[0]) for r in file_rows]
            for rid in expired:
                files.extend(
                    self.get_file(r[0])
                    for r in db.execute("SELECT file_id FROM files WHERE request_id = ?", (rid,)).fetchall()
                )
                db.execute("DELETE FROM logs WHERE request_id = ?", (rid,))
                db.execute("DELETE FROM webhooks WHERE request_id = ?", (rid,))
                db.execute("DELETE FROM files WHERE request_id = ?", (rid,))
                db.execute("DELETE FROM jobs WHERE request_id = ?", (rid,))
            db.execute("DELETE FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        unique = {f.file_id: f for f in files if f is not None}
        return list(unique.values())

    def counts(self) -> StoreCounts:
        c = StoreCounts()
        for state, failed, n in self._db().execute(
            "SELECT state, error IS NOT NULL, COUNT(*) FROM jobs GROUP BY state, error IS NOT NULL"
        ).fetchall():
            if state == "IN_QUEUE":
                c.in_queue += n
            elif state == "IN_PROGRESS":
                c.in_progress += n
            elif failed:
                c.completed_error += n
            else:
                c.completed_ok += n
        return c

    @staticmethod
    def _observe_generation(db: sqlite3.Connection, seconds: float) -> None:
        for name, amount in GenerationHistogram.increments(seconds):
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, amount),
            )

    def generation_histogram(self) -> GenerationHistogram:
        return GenerationHistogram.from_counters(
            dict(self._db().execute("SELECT name, value FROM counters WHERE name LIKE 'generation_%'").fetchall()))

    def inference_times(self) -> list[float]:
        rows = self._db().execute(
            "SELECT inference_time FROM jobs WHERE state = 'COMPLETED' AND inference_time IS NOT NULL"
        ).fetchall()
        return [r[0] for r in rows]

    # --- workers --------------------------------------------------------------------------------------------------
    def heartbeat(self, worker_id: str, *, ready: bool, info: dict[str, Any] | None = None) -> None:
        with self._tx(immediate=True) as db:
            db.execute(
                "INSERT INTO workers (worker_id, ready, info, seen_at) VALUES (?,?,?,?)"
                " ON CONFLICT(worker_id) DO UPDATE SET ready = excluded.ready,"
                " info = COALESCE(excluded.info, workers.info), seen_at = excluded.seen_at",
                (worker_id, int(ready), _dumps(info), time.time()),
            )

    def live_workers(self, max_age_seconds: float) -> list[dict[str, Any]]:
        rows = self._db().execute(
            "SELECT worker_id, ready, info, seen_at FROM workers WHERE seen_at >= ?",
            (time.time() - max_age_seconds,),
        ).fetchall()
        return [
            {"worker_id": r[0], "ready": bool(r[1]), "info": _loads(r[2]), "seen_at": r[3]} for r in rows
        ]

    def forget_worker(self, worker_id: str) -> None:
        with self._tx(immediate=True) as db:
            db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

