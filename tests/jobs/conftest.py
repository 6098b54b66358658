"""The job store backends the contract suite (test_store_contract.py) runs on.

A backend is accepted when the whole suite passes on it: add its factory to STORE_FACTORIES and its name to the
`store` fixture's params. A factory builds a fresh, empty store for one test: factory(tmp_path, retention_seconds).
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


STORE_FACTORIES: dict[str, Callable[[Path, int], JobStore]] = {"sqlite": _sqlite}


@pytest.fixture(params=["sqlite"])
def store(request, tmp_path) -> JobStore:
    s = STORE_FACTORIES[request.param](tmp_path, RETENTION_SECONDS)
    yield s
    s.close()
