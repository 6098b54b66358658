"""The job store backends the contract suite (test_store_contract.py) runs on.

A backend is accepted when the whole suite passes on it: add its factory to STORE_FACTORIES. A factory builds a
fresh, empty store for one test: factory(tmp_path, retention_seconds, **fixtures it names in FACTORY_FIXTURES).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import JobStore

RETENTION_SECONDS = 100  # the stores' default result retention in the contract tests


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
