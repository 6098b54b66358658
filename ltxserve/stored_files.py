"""Files this server stores (uploads, outputs), found by id through the store and never by joining a user's path.

Both the API (serving /files/...) and the worker (reading an input URL that names one of this server's files) find a
file here: the id must be one the store knows, the name must be the stored name, the record must be complete and
unexpired, and the storage must hold its bytes where the record says (storage.py owns the layout).
"""

from __future__ import annotations

import time
from pathlib import Path

from ltxserve.jobs.store import JobStore, StoredFile
from ltxserve.storage import FILE_ID, FileStorage


def stored_file(store: JobStore, storage: FileStorage, file_id: str, file_name: str | None = None,
                now: float | None = None) -> tuple[StoredFile, Path] | None:
    """The record and the path of a complete, unexpired stored file, or None (whatever is wrong with it)."""
    if not FILE_ID.match(file_id or ""):
        return None
    record = store.get_file(file_id)
    if record is None or not record.complete or (file_name is not None and file_name != record.file_name):
        return None
    if record.expires_at is not None and record.expires_at <= (time.time() if now is None else now):
        return None
    path = storage.path_for(record)
    return None if path is None else (record, path)


def own_file_lookup(store: JobStore, storage: FileStorage):
    """For the engine's fetcher: url -> Path of the stored file, False for a file URL of this server that names no
    stored file, None for any other URL."""

    def lookup(url: str) -> Path | bool | None:
        ids = storage.parse_url(url)
        if ids is None:
            return None
        found = stored_file(store, storage, *ids)
        return found[1] if found else False

    return lookup
