"""The weights folder on disk: hashing, verification against weights.lock, import from another folder, and `show`.

The folder is laid out exactly as `ltxserve.engine.models.load_components` reads it (the lock's `dest` paths):
PATH/ltxv-13b-0.9.7-dev.safetensors, PATH/ltxv-spatial-upscaler-0.9.7.safetensors, PATH/text_encoder/text_encoder/,
PATH/text_encoder/tokenizer/.

Hashing 48 GB takes minutes, so a successful check is remembered in PATH/.ltxserve/verified.json keyed by the file's
size, mtime and inode. A "quick" check trusts that record while those are unchanged (any write changes the mtime);
`ltxserve weights verify` without --quick always re-reads every byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Iterable

from ltxserve.weights.lock import LockedComponent, LockedFile, WeightsLock

HASH_CHUNK = 8 * 1024 * 1024
CACHE_RELPATH = Path(".ltxserve") / "verified.json"
PART_SUFFIX = ".part"

ByteCallback = Callable[[int], None]


class WeightsError(RuntimeError):
    """A weights operation failed; the message says what to do next."""


def sha256_file(path: Path, on_bytes: ByteCallback | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def part_path(path: Path) -> Path:
    return path.with_name(path.name + PART_SUFFIX)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class VerifiedCache:
    """Remembers which files were hashed, keyed by (size, mtime_ns, inode), so restarts need not re-read 48 GB."""

    def __init__(self, weights_dir: Path) -> None:
        self.path = weights_dir / CACHE_RELPATH
        self._lock = threading.Lock()
        try:
            self._entries: dict[str, dict] = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self._entries = {}

    @staticmethod
    def _key(st: os.stat_result) -> dict:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}

    def lookup(self, dest: str, st: os.stat_result) -> str | None:
        entry = self._entries.get(dest)
        if entry and {k: entry.get(k) for k in ("size", "mtime_ns", "inode")} == self._key(st):
            return entry.get("sha256")
        return None

    def record(self, dest: str, st: os.stat_result, sha256: str) -> None:
        with self._lock:
            self._entries[dest] = {**self._key(st), "sha256": sha256}

    def forget(self, dest: str) -> None:
        with self._lock:
            self._entries.pop(dest, None)

    def save(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A temp name of our own: several processes (workers verifying at start) may save at once.
            fd, tmp = tempfile.mkstemp(prefix=".verified.", dir=self.path.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(self._entries, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


class FileState(str, Enum):
    OK = "ok"
    MISSING = "missing"
    PARTIAL = "partial download"
    SIZE_MISMATCH = "size mismatch"
    HASH_MISMATCH = "hash mismatch"
    HASH_UNKNOWN = "hash not in lock"
    UNCHECKED = "present, not verified yet"


@dataclass
class FileStatus:
    component: str
    file: LockedFile
    path: Path
    state: FileState
    size: int | None = None  # bytes on disk
    sha256: str | None = None  # computed hash, when it was computed (or remembered)

    @property
    def ok(self) -> bool:
        return self.state is FileState.OK

    def describe(self) -> str:
        text = f"{self.component}: {self.file.dest}: {self.state.value}"
        if self.state is FileState.SIZE_MISMATCH:
            text += f" ({self.size} bytes on disk, lock says {self.file.size})"
        elif self.state is FileState.HASH_MISMATCH:
            text += f" (sha256 {self.sha256}, lock says {self.file.sha256})"
        elif self.state is FileState.PARTIAL:
            text += f" ({self.size} bytes so far; `ltxserve weights pull` resumes it)"
        elif self.state is FileState.HASH_UNKNOWN:
            text += " (run `ltxserve weights pull` or `import` to record its hash)"
        elif self.state is FileState.UNCHECKED:
            text += " (run `ltxserve weights verify`)"
        return text


@dataclass
class VerifyReport:
    statuses: list[FileStatus] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.statuses) and all(s.ok for s in self.statuses)

    @property
    def problems(self) -> list[FileStatus]:
        return [s for s in self.statuses if not s.ok]

    def summary(self) -> str:
        if self.ok:
            return f"all {len(self.statuses)} weight files present and verified"
        lines = [f"{len(self.problems)} of {len(self.statuses)} weight files are not ready:"]
        lines.extend("  " + s.describe() for s in self.problems)
        return "\n".join(lines)


def check_file(
    weights_dir: Path,
    component: str,
    file: LockedFile,
    *,
    cache: VerifiedCache | None = None,
    quick: bool = False,
    hash_files: bool = True,
    on_bytes: ByteCallback | None = None,
) -> FileStatus:
    """Compare one file on disk with its lock entry. Hashes it unless `quick` and the cache vouches for it;
    with `hash_files=False` an unvouched file is reported UNCHECKED instead of read."""
    path = weights_dir / file.dest
    try:
        st = path.stat()
    except FileNotFoundError:
        part = part_path(path)
        if part.exists():
            return FileStatus(component, file, path, FileState.PARTIAL, size=part.stat().st_size)
        return FileStatus(component, file, path, FileState.MISSING)
    if file.size is not None and st.st_size != file.size:
        return FileStatus(component, file, path, FileState.SIZE_MISMATCH, size=st.st_size)
    digest = cache.lookup(file.dest, st) if (cache is not None and quick) else None
    if digest is None and not hash_files:
        return FileStatus(component, file, path, FileState.UNCHECKED, size=st.st_size)
    if digest is None:
        digest = sha256_file(path, on_bytes)
        if cache is not None:
            cache.record(file.dest, st, digest)
    if not file.hash_known:
        return FileStatus(component, file, path, FileState.HASH_UNKNOWN, size=st.st_size, sha256=digest)
    state = FileState.OK if digest == file.sha256 else FileState.HASH_MISMATCH
    if state is FileState.HASH_MISMATCH and cache is not None:
        cache.forget(file.dest)
    return FileStatus(component, file, path, state, size=st.st_size, sha256=digest)


def verify_weights(
    lock: WeightsLock,
    weights_dir: Path,
    *,
    components: Iterable[str] | None = None,
    include_optional: bool = False,
    quick: bool = False,
    hash_files: bool = True,
    on_bytes: ByteCallback | None = None,
) -> VerifyReport:
    """Check every selected file of the lock against the folder (full hashes unless `quick`)."""
    weights_dir = Path(weights_dir)
    cache = VerifiedCache(weights_dir)
    report = VerifyReport()
    for comp in lock.select(components, include_optional=include_optional):
        for f in comp.files:
            report.statuses.append(
                check_file(
                    weights_dir, comp.name, f, cache=cache, quick=quick, hash_files=hash_files, on_bytes=on_bytes
                )
            )
    if weights_dir.is_dir():
        cache.save()
    return report


def _candidates(source_dir: Path, comp: LockedComponent, f: LockedFile) -> list[Path]:
    repo_name = comp.repo.split("/", 1)[1]
    return [
        source_dir / f.dest,  # another ltxserve weights folder
        source_dir / f.path,  # a snapshot of the repository
        source_dir / repo_name / f.path,  # snapshots of several repositories side by side
        source_dir / comp.repo.replace("/", "--") / f.path,
    ]


def find_source_file(source_dir: Path, comp: LockedComponent, f: LockedFile) -> Path | None:
    """Where `f` is in an import folder: by its weights-folder path, its repository path, or a unique file name."""
    for candidate in _candidates(source_dir, comp, f):
        if candidate.is_file():
            return candidate
    name = Path(f.path).name
    matches = [p for p in source_dir.rglob(name) if p.is_file() and PART_SUFFIX not in p.name]
    return matches[0] if len(matches) == 1 else None


def copy_verified(
    source: Path, target: Path, expected_sha256: str | None, on_bytes: ByteCallback | None = None
) -> tuple[str, int]:
    """Copy `source` to `target` through a .part file, hashing on the way; rename only when the hash matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(part, "wb") as dst:
        while chunk := src.read(HASH_CHUNK):
            dst.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
        dst.flush()
        os.fsync(dst.fileno())
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{source}: sha256 {actual} does not match the lock ({expected_sha256}); not imported")
    os.replace(part, target)
    fsync_dir(target.parent)
    return actual, size


@dataclass
class ImportResult:
    report: VerifyReport
    lock: WeightsLock  # with any newly recorded hashes
    imported: list[str] = field(default_factory=list)  # dest paths copied
    recorded: list[str] = field(default_factory=list)  # dest paths whose hash was unknown and is now in the lock


def import_weights(
    lock: WeightsLock,
    source_dir: Path,
    weights_dir: Path,
    *,
    components: Iterable[str] | None = None,
    include_optional: bool = False,
    record: bool = True,
    on_bytes: ByteCallback | None = None,
    now: Callable[[], str] | None = None,
) -> ImportResult:
    """Copy the lock's files from `source_dir` (air-gapped machines) into `weights_dir`, verifying each hash.

    Files already present and verified are left alone. A file whose hash the lock does not know is imported only
    when `record` is true, and its hash is then recorded (trust on first use). The caller writes the returned lock.
    """
    source_dir, weights_dir = Path(source_dir), Path(weights_dir)
    if not source_dir.is_dir():
        raise WeightsError(f"import source is not a folder: {source_dir}")
    selected = lock.select(components, include_optional=include_optional)
    missing = [
        f"{c.name}: {f.path}" for c in selected for f in c.files if find_source_file(source_dir, c, f) is None
    ]
    if missing:
        raise WeightsError(
            f"{source_dir} lacks {len(missing)} file(s) the lock lists (looked for the weights-folder path, the "
            "repository path and a unique file name):\n  " + "\n  ".join(missing)
        )
    if not record:
        unknown = [f"{c.name}: {f.dest}" for c in selected for f in c.files if not f.hash_known]
        if unknown:
            raise WeightsError(
                "these files have no hash in the lock, so they cannot be verified (run without --no-record to "
                "record them):\n  " + "\n  ".join(unknown)
            )
    weights_dir.mkdir(parents=True, exist_ok=True)
    cache = VerifiedCache(weights_dir)
    stamp = now() if now else utc_now()
    result = ImportResult(report=VerifyReport(), lock=lock)
    for comp in selected:
        for f in comp.files:
            status = check_file(weights_dir, comp.name, f, cache=cache, quick=True)
            if status.ok:
                continue
            source = find_source_file(source_dir, comp, f)
            assert source is not None  # checked above
            target = weights_dir / f.dest
            digest, size = copy_verified(source, target, f.sha256 if f.hash_known else None, on_bytes)
            cache.record(f.dest, target.stat(), digest)
            result.imported.append(f.dest)
            if not f.hash_known:
                result.lock = result.lock.with_recorded(
                    comp.name, f.dest, sha256=digest, size=size,
                    source=f"recorded by `ltxserve weights import` from {source} on {stamp} (trust on first use)",
                )
                result.recorded.append(f.dest)
    cache.save()
    result.report = verify_weights(result.lock, weights_dir, components=[c.name for c in selected], quick=True)
    return result


def utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _human(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{nbytes} B"


def show_weights(lock: WeightsLock, weights_dir: Path, *, include_optional: bool = True) -> str:
    """What is there, what is missing, sizes: a table from the lock and the folder (no hashing except of files the
    verification record does not vouch for)."""
    report = verify_weights(lock, Path(weights_dir), include_optional=include_optional, quick=True)
    by_dest = {s.file.dest: s for s in report.statuses}
    lines = [f"weights folder: {Path(weights_dir).resolve()}", f"lock: {lock.path or '(in memory)'}"]
    for comp in lock.select(include_optional=include_optional):
        pin = comp.revision[:12] if comp.revision_resolved else comp.revision
        flag = " (optional)" if comp.optional else ""
        lines.append(f"\n{comp.name}{flag}: {comp.repo} @ {pin}")
        if comp.description:
            lines.append(f"  {comp.description}")
        for f in comp.files:
            s = by_dest[f.dest]
            hash_note = "" if f.hash_known else " [hash unknown]"
            if f.hash_known and not f.verified:
                hash_note = " [hash not confirmed upstream]"
            lines.append(
                f"  {s.state.value:<16} {_human(s.size):>10} / {_human(f.size):>10}  {f.dest}{hash_note}"
            )
    total_expected = sum(f.size or 0 for c in lock.select(include_optional=include_optional) for f in c.files)
    total_present = sum(s.size or 0 for s in report.statuses if s.state is not FileState.MISSING)
    lines.append(f"\non disk {_human(total_present)}; known sizes in the lock add up to {_human(total_expected)}")
    optional = {c.name for c in lock.components if c.optional}
    required = VerifyReport([s for s in report.statuses if s.component not in optional])
    lines.append("required weights: ready to serve" if required.ok else "NOT ready to serve:\n" + required.summary())
    return "\n".join(lines)
