"""The job store backends the contract suite (test_store_contract.py) runs on.

A backend is accepted when the whole suite passes on it: add its factory to STORE_FACTORIES. A factory builds a
fresh, empty store for one test: factory(tmp_path, retention_seconds, **fixtures it names in FACTORY_FIXTURES).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

import pytest

from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job, JobStore
from ltxserve.protocol import Priority

RETENTION_SECONDS = 100  # the stores' default result retention in the contract tests
EP = "test/app/run"


def make_job(priority: Priority = Priority.NORMAL, **kw) -> Job:
    return Job(request_id=kw.pop("request_id", uuid.uuid4().hex), endpoint_id=kw.pop("endpoint_id", EP),
               owner="test", app="app", input=kw.pop("input", {"x": 1}), priority=priority, **kw)


def store_address(store: JobStore) -> tuple[str, str]:
    """What another process needs to open the same store (picklable): (backend, path or URL)."""
    if isinstance(store, SqliteJobStore):
        return "sqlite", str(store.path)
    return "redis", store.url


def open_store(address: tuple[str, str]) -> JobStore:
    backend, where = address
    if backend == "sqlite":
        return SqliteJobStore(Path(where))
    from ltxserve.jobs.redis_store import RedisJobStore

    return RedisJobStore(where)


def _sqlite(tmp_path: Path, retention_seconds: int) -> JobStore:
    return SqliteJobStore(tmp_path / "jobs.sqlite3", default_retention_seconds=retention_seconds)


def _redis(tmp_path: Path, retention_seconds: int, redis_url: str) -> JobStore:
    from ltxserve.jobs.redis_store import RedisJobStore

    return RedisJobStore(redis_url, default_retention_seconds=retention_seconds)


STORE_FACTORIES: dict[str, Callable[..., JobStore]] = {"sqlite": _sqlite, "redis": _redis}
# Fixtures a backend's factory needs, passed to it by name (redis_url: a real redis-server, emptied for the test).
FACTORY_FIXTURES: dict[str, tuple[str, ...]] = {"redis": ("redis_url",)}


@pytest.fixture(params=list(STORE_FACTORIES))
def store(request, tmp_path) -> JobStore:
    needs = {name: request.getfixturevalue(name) for name in FACTORY_FIXTURES.get(request.param, ())}
    s = STORE_FACTORIES[request.param](tmp_path, RETENTION_SECONDS, **needs)
    yield s
    s.close()
