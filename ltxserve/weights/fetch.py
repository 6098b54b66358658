"""`ltxserve weights pull`: download the lock's files at their pinned revisions, resumably and in parallel.

Each file goes to DEST.part; an interrupted transfer (a dropped connection, a killed process) resumes from the bytes
already on disk with an HTTP Range request. When the file is complete its sha256 is checked against the lock and only
then renamed into place, so a file at its final path is always a verified one. URLs are
{base_url}/{repo}/resolve/{revision}/{path} with the lock's exact commit id, never a branch such as "main".
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import quote

import httpx

from ltxserve.weights.lock import LockError, LockedComponent, LockedFile, WeightsLock
from ltxserve.weights.store import (
    ByteCallback,
    FileState,
    VerifiedCache,
    VerifyReport,
    WeightsError,
    utc_now,
    check_file,
    fsync_dir,
    part_path,
    verify_weights,
)

DEFAULT_BASE_URL = "https://huggingface.co"
DOWNLOAD_CHUNK = 1024 * 1024
LogFn = Callable[[str], None]


class FetchError(WeightsError):
    """A download failed; partial files are kept so that the next pull resumes.

    `lock` carries hashes recorded for the files that did complete, so the caller can still save them.
    """

    def __init__(self, message: str, lock: WeightsLock | None = None) -> None:
        super().__init__(message)
        self.lock = lock


def file_url(base_url: str, repo: str, revision: str, path: str) -> str:
    return f"{base_url.rstrip('/')}/{repo}/resolve/{revision}/{quote(path)}"


def _hash_prefix(path: Path) -> tuple["hashlib._Hash", int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * DOWNLOAD_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest, size


def download_file(
    client: httpx.Client,
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None,
    expected_size: int | None = None,
    on_bytes: ByteCallback | None = None,
    retries: int = 5,
    backoff_seconds: float = 1.0,
) -> tuple[str, int]:
    """Download `url` to `dest`, resuming DEST.part; verify, then rename. Returns (sha256, size)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if part.exists() and expected_size is not None and part.stat().st_size > expected_size:
        part.unlink()  # longer than the file can be: not a prefix of it
    digest, have = _hash_prefix(part) if part.exists() else (hashlib.sha256(), 0)
    if have and on_bytes:
        on_bytes(have)
    attempt = 0
    while True:
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and have:
                    if expected_size is None or have == expected_size:
                        break  # the .part already holds the whole file
                    part.unlink()  # not a prefix of this file: start over
                    if on_bytes:
                        on_bytes(-have)
                    digest, have = hashlib.sha256(), 0
                    continue
                if response.status_code in (401, 403, 404):
                    raise FetchError(_http_refusal(response.status_code, url))
                if response.status_code not in (200, 206):
                    raise httpx.HTTPStatusError(
                        f"HTTP {response.status_code}", request=response.request, response=response
                    )
                if response.status_code == 206 and not _range_starts_at(response, have):
                    # A range we did not ask for: drop the partial file and ask for the whole file.
                    part.unlink(missing_ok=True)
                    if on_bytes:
                        on_bytes(-have)
                    digest, have = hashlib.sha256(), 0
                    continue
                if response.status_code == 200 and have:
                    # The server ignored the Range header and sends the whole file: start over.
                    if on_bytes:
                        on_bytes(-have)
                    digest, have = hashlib.sha256(), 0
                mode = "ab" if have else "wb"
                with open(part, mode) as fh:
                    for chunk in response.iter_bytes():  # as received: a chunk buffer would lose bytes on a cut
                        fh.write(chunk)
                        digest.update(chunk)
                        have += len(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
            break
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            attempt += 1
            if attempt > retries:
                raise FetchError(
                    f"{url}: download interrupted ({exc.__class__.__name__}: {exc}) after {retries} retries; "
                    f"{have} bytes are kept in {part} and the next `ltxserve weights pull` resumes from there"
                ) from None
            time.sleep(min(backoff_seconds * 2 ** (attempt - 1), 30.0))
        except OSError as exc:  # the local side: disk full, permissions
            raise FetchError(f"{url}: cannot write {part}: {exc}") from None
    actual = digest.hexdigest()
    if expected_size is not None and have != expected_size:
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: got {have} bytes, the lock says {expected_size}; the download was discarded")
    if expected_sha256 is not None and actual != expected_sha256:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"{url}: sha256 {actual} does not match the lock ({expected_sha256}); the download was discarded. "
            "The file upstream differs from the pinned one: check the lock's revision."
        )
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return actual, have


def _range_starts_at(response: httpx.Response, offset: int) -> bool:
    content_range = response.headers.get("content-range", "")  # "bytes START-END/TOTAL"
    try:
        start = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return False
    return start == offset


def _http_refusal(status: int, url: str) -> str:
    if status == 404:
        return f"{url}: not found (404): the repository, revision or path in weights.lock does not exist upstream"
    return (
        f"{url}: access refused ({status}); if the repository is gated, accept its terms on the Hub and set "
        "LTXSERVE_HF_TOKEN (or HF_TOKEN) to a token that can read it"
    )


@dataclass
class PullResult:
    report: VerifyReport
    lock: WeightsLock  # with any newly recorded hashes and sizes
    downloaded: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)


def check_pullable(components: Iterable[LockedComponent], *, record: bool) -> None:
    """Refuse before any byte moves: unpinned revisions, and unknown hashes when not recording."""
    unresolved = [c for c in components if not c.revision_resolved]
    if unresolved:
        names = ", ".join(f"{c.name} ({c.repo})" for c in unresolved)
        raise LockError(
            f"cannot pull {names}: weights.lock has no pinned revision for it (revision = {unresolved[0].revision!r}). "
            "ltxserve never downloads a moving branch such as 'main'. Pin the exact commit with "
            "`ltxserve weights pin NAME COMMIT_SHA`, or copy the files in with `ltxserve weights import DIR`."
        )
    if not record:
        unknown = [f"{c.name}: {f.dest}" for c in components for f in c.files if not f.hash_known]
        if unknown:
            raise LockError(
                "these files have no sha256 in weights.lock, so a download could not be verified (drop "
                "--no-record to record their hashes on first download):\n  " + "\n  ".join(unknown)
            )


class _Progress:
    """A thread-safe byte counter feeding an optional tqdm bar and an optional log line every 10%."""

    def __init__(self, total: int | None, show_bar: bool, log: LogFn | None) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.total = total
        self._log = log
        self._next_report = 0.1
        self._bar = None
        if show_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="weights")

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            if self._bar is not None:
                self._bar.update(nbytes)
            if self._log and self.total and self.done / self.total >= self._next_report:
                self._log(f"weights download: {self.done / 1e9:.2f} of {self.total / 1e9:.2f} GB")
                while self.done / self.total >= self._next_report:
                    self._next_report += 0.1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def pull_weights(
    lock: WeightsLock,
    weights_dir: Path,
    *,
    components: Iterable[str] | None = None,
    include_optional: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    token: str | None = None,
    record: bool = True,
    workers: int = 4,
    retries: int = 5,
    backoff_seconds: float = 1.0,
    timeout_seconds: float = 60.0,
    progress_bar: bool = False,
    log: LogFn | None = None,
    transport: httpx.BaseTransport | None = None,
) -> PullResult:
    """Bring the weights folder up to the lock: download what is missing or wrong, verify everything.

    Returns the lock with newly recorded hashes (for files whose hash was "unknown") for the caller to write.
    """
    weights_dir = Path(weights_dir)
    selected = lock.select(components, include_optional=include_optional)
    check_pullable(selected, record=record)
    weights_dir.mkdir(parents=True, exist_ok=True)
    cache = VerifiedCache(weights_dir)
    result = PullResult(report=VerifyReport(), lock=lock)

    todo: list[tuple[LockedComponent, LockedFile]] = []
    for comp in selected:
        for f in comp.files:
            status = check_file(weights_dir, comp.name, f, cache=cache, quick=True)
            if status.ok:
                result.already_present.append(f.dest)
                continue
            if status.state in (FileState.HASH_MISMATCH, FileState.SIZE_MISMATCH, FileState.HASH_UNKNOWN):
                # A wrong (or unverifiable) file at the final path: move it aside and fetch it again.
                if log:
                    log(f"weights: {status.describe()}; downloading it again")
                status.path.unlink()
                cache.forget(f.dest)
            todo.append((comp, f))
    cache.save()

    known_total = sum(f.size for _, f in todo if f.size is not None)
    all_sizes_known = all(f.size is not None for _, f in todo)
    progress = _Progress(known_total if all_sizes_known else None, progress_bar, log)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stamp = utc_now()
    errors: list[str] = []
    try:
        with httpx.Client(
            headers=headers, follow_redirects=True, timeout=httpx.Timeout(timeout_seconds), transport=transport
        ) as client:

            def fetch(comp: LockedComponent, f: LockedFile) -> tuple[str, int]:
                url = file_url(base_url, comp.repo, comp.revision, f.path)
                if log:
                    log(f"weights: downloading {comp.repo}@{comp.revision[:12]} {f.path} -> {f.dest}")
                return download_file(
                    client,
                    url,
                    weights_dir / f.dest,
                    expected_sha256=f.sha256 if f.hash_known else None,
                    expected_size=f.size,
                    on_bytes=progress,
                    retries=retries,
                    backoff_seconds=backoff_seconds,
                )

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                futures = {pool.submit(fetch, comp, f): (comp, f) for comp, f in todo}
                for future in as_completed(futures):
                    comp, f = futures[future]
                    try:
                        digest, size = future.result()
                    except WeightsError as exc:
                        errors.append(str(exc))
                        continue
                    cache.record(f.dest, (weights_dir / f.dest).stat(), digest)
                    result.downloaded.append(f.dest)
                    if not f.hash_known or f.size is None:
                        url = file_url(base_url, comp.repo, comp.revision, f.path)
                        result.lock = result.lock.with_recorded(
                            comp.name, f.dest, sha256=digest, size=size,
                            source=f"recorded by `ltxserve weights pull` from {url} on {stamp} (trust on first use)",
                        )
                        if not f.hash_known:
                            result.recorded.append(f.dest)
    finally:
        progress.close()
        cache.save()
    if errors:
        raise FetchError("weights pull failed:\n  " + "\n  ".join(errors), lock=result.lock)
    result.report = verify_weights(
        result.lock, weights_dir, components=[c.name for c in selected], quick=True
    )
    return result
