"""The wiring builds the store and storage the settings name; a store it cannot build is a one-line usage error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ltxserve.config import Settings
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.storage import LocalFolderStorage
from ltxserve.wiring import build_storage, build_store

REPO = Path(__file__).resolve().parents[1]


def test_sqlite_is_the_default_and_files_follow_the_setting(tmp_path):
    for store_setting in (None, "sqlite"):
        store = build_store(Settings(data_dir=tmp_path, store=store_setting, result_retention_seconds=77))
        try:
            assert isinstance(store, SqliteJobStore) and store.path == tmp_path / "jobs.sqlite3"
            assert store.default_retention_seconds == 77
        finally:
            store.close()
    default = build_storage(Settings(data_dir=tmp_path, port=8111))
    assert isinstance(default, LocalFolderStorage) and default.root == tmp_path / "files"
    shared = build_storage(Settings(data_dir=tmp_path, files=tmp_path / "mnt", public_url="http://api:1/"))
    assert shared.root == tmp_path / "mnt" and shared.root.is_dir() and shared.base_url == "http://api:1"


def test_an_unknown_store_is_one_line_naming_the_flag(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ltxserve.cli", "worker", "--store", "mysql://x", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--store" in out.stderr and "LTXSERVE_STORE" in out.stderr and len(out.stderr.strip().splitlines()) == 1
