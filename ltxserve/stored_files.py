"""Files this server stores (uploads, outputs), found by id through the store and never by joining a user's path.

Uploads and outputs live under settings.files_dir/<file_id>/<file_name> and are indexed in the job store. Both the
API (serving /files/...) and the worker (reading an input URL that names one of this server's files) find a file
here: the id must be one the store knows, the name must be the stored name, and the path the store holds must lie
inside the files folder.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ltxserve.jobs.store import JobStore, StoredFile

FILE_ID = re.compile(r"^[0-9a-f]{32}$")


def stored_file(store: JobStore, files_dir: Path, file_id: str, file_name: str | None = None,
                now: float | None = None) -> tuple[StoredFile, Path] | None:
    """The record and the path of a complete, unexpired stored file, or None (whatever is wrong with it)."""
    if not FILE_ID.match(file_id or ""):
        return None
    record = store.get_file(file_id)
    if record is None or not record.complete or (file_name is not None and file_name != record.file_name):
        return None
    if record.expires_at is not None and record.expires_at <= (time.time() if now is None else now):
        return None
    root = Path(files_dir).resolve()
    path = (root / record.path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return record, path


def file_in_url(url: str, base_url: str) -> tuple[str, str] | None:
    """(file_id, file_name) when `url` is one of this server's file URLs (base_url/files/<id>/<name>), else None.

    Anything under base_url/files/ that is not exactly two path segments gives ("", "") so that the caller refuses
    it instead of fetching it over HTTP.
    """
    prefix = base_url.rstrip("/") + "/files/"
    if not url.startswith(prefix):
        return None
    path = urlsplit(url).path
    rest = path.split("/files/", 1)[1] if "/files/" in path else ""
    segments = rest.split("/")
    if len(segments) != 2 or not all(segments):
        return "", ""
    return segments[0], unquote(segments[1])


def own_file_lookup(store: JobStore, files_dir: Path, base_url: str):
    """For the engine's fetcher: url -> Path of the stored file, False for a file URL of this server that names no
    stored file, None for any other URL."""

    def lookup(url: str) -> Path | bool | None:
        ids = file_in_url(url, base_url)
        if ids is None:
            return None
        found = stored_file(store, files_dir, *ids)
        return found[1] if found else False

    return lookup
