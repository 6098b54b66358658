"""Where files live: uploads and generated outputs, their ids, their layout and their public URLs.

The only module that joins paths for stored files. The job store indexes them (StoredFile records, which expire with
their job); a FileStorage holds the bytes. Callers never build a path or a /files/ URL themselves.

Backend: LocalFolderStorage, a folder laid out as <root>/<file_id>/<file_name>. The same class serves a folder on a
shared mount (NFS, SMB): several hosts (API nodes, worker nodes) may point `--files` at one mount. Every write goes
to a temporary name in the file's folder and is renamed into place when complete, so a reader on another host sees
the whole file or none of it. (An object store backend, e.g. S3, is not written yet.)
"""

from __future__ import annotations

import abc
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import quote, unquote, urlsplit

from ltxserve.config import Settings
from ltxserve.jobs.store import StoredFile

FILE_ID = re.compile(r"^[0-9a-f]{32}$")  # 128 random bits, hex: the file's id and, for an upload, the capability

_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "video/mp4": ".mp4",
               "application/octet-stream": ".bin"}


def safe_file_name(name: str | None, content_type: str) -> str:
    """A file name reduced to letters, digits, '.', '_' and '-' (at most 128): safe on disk and in URLs."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name or "").name)[-128:].strip(". ")
    return base or ("upload" + _EXTENSIONS.get(content_type, ".bin"))


class FileStorage(abc.ABC):
    """The bytes of stored files. Records come back as StoredFile values for the caller to index in the JobStore."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    # --- writing --------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def save(self, data: bytes | Path, file_name: str, content_type: str,
             request_id: str | None = None) -> StoredFile:
        """Store complete bytes (a Path is moved in) under a new id; returns the record (complete, sized)."""

    def new_upload(self, file_name: str | None, content_type: str, expires_at: float | None) -> StoredFile:
        """A record for an upload to come (fal's initiate → PUT): an id, a name and a place; no bytes yet."""
        file_id = uuid.uuid4().hex
        name = safe_file_name(file_name, content_type)
        return StoredFile(file_id=file_id, path=f"{file_id}/{name}", content_type=content_type, file_name=name,
                          file_size=0, created_at=time.time(), expires_at=expires_at, complete=False)

    @abc.abstractmethod
    @contextmanager
    def writer(self, record: StoredFile) -> Iterator[BinaryIO]:
        """Write a record's bytes; they become visible only when the block ends without an exception."""

    # --- reading and deleting -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def path_for(self, record: StoredFile) -> Path | None:
        """The local path of a record's bytes, or None when they are missing or the record points outside."""

    def open(self, record: StoredFile) -> BinaryIO:
        path = self.path_for(record)
        if path is None:
            raise FileNotFoundError(record.file_id)
        return open(path, "rb")

    @abc.abstractmethod
    def delete(self, record: StoredFile) -> None:
        """Remove a record's bytes (missing bytes are not an error)."""

    # --- URLs -----------------------------------------------------------------------------------------------------
    def url_for(self, record: StoredFile) -> str:
        return f"{self.base_url}/files/{record.file_id}/{quote(record.file_name, safe='')}"

    def parse_url(self, url: str) -> tuple[str, str] | None:
        """(file_id, file_name) when `url` is one of this server's file URLs (base_url/files/<id>/<name>), else None.

        Anything under base_url/files/ that is not exactly two path segments gives ("", "") so that the caller
        refuses it instead of fetching it over HTTP.
        """
        prefix = self.base_url + "/files/"
        if not url.startswith(prefix):
            return None
        path = urlsplit(url).path
        rest = path.split("/files/", 1)[1] if "/files/" in path else ""
        segments = rest.split("/")
        if len(segments) != 2 or not all(segments):
            return "", ""
        return segments[0], unquote(segments[1])

    def file_id_from_url(self, url: str) -> str | None:
        """The file id a URL of this server names ("" for a malformed one of ours), or None for any other URL."""
        parsed = self.parse_url(url)
        return None if parsed is None else parsed[0]


class LocalFolderStorage(FileStorage):
    """Files under one folder, local or a shared mount: <root>/<file_id>/<file_name>."""

    def __init__(self, root: Path | str, base_url: str):
        super().__init__(base_url)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _target(self, record: StoredFile) -> Path:
        root = self.root.resolve()
        target = (root / record.path).resolve()
        if not FILE_ID.match(record.file_id) or not target.is_relative_to(root / record.file_id):
            raise ValueError(f"stored file {record.file_id!r} points outside its folder")
        return target

    @contextmanager
    def _atomic(self, target: Path) -> Iterator[Path]:
        # The temporary name starts with '.', lives in the same folder (so the rename is atomic on the same file
        # system, a shared mount included) and is never a name the server hands out.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def save(self, data: bytes | Path, file_name: str, content_type: str,
             request_id: str | None = None) -> StoredFile:
        file_id = uuid.uuid4().hex
        name = safe_file_name(file_name, content_type)
        record = StoredFile(file_id=file_id, path=f"{file_id}/{name}", content_type=content_type, file_name=name,
                            file_size=0, created_at=time.time(), request_id=request_id)
        target = self._target(record)
        with self._atomic(target) as tmp:
            if isinstance(data, (bytes, bytearray, memoryview)):
                tmp.write_bytes(data)
            else:
                shutil.move(str(data), tmp)
        record.file_size = target.stat().st_size
        return record

    @contextmanager
    def writer(self, record: StoredFile) -> Iterator[BinaryIO]:
        with self._atomic(self._target(record)) as tmp, open(tmp, "wb") as out:
            yield out

    def path_for(self, record: StoredFile) -> Path | None:
        try:
            path = self._target(record)
        except ValueError:
            return None
        return path if path.is_file() else None

    def delete(self, record: StoredFile) -> None:
        if FILE_ID.match(record.file_id):
            shutil.rmtree(self.root / record.file_id, ignore_errors=True)


def storage_from_settings(settings: Settings) -> FileStorage:
    """The storage `settings.files` names (a folder; default DATA_DIR/files)."""
    return LocalFolderStorage(settings.files_dir, settings.base_url())
