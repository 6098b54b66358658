"""weights.lock: every weight file ltxserve loads, pinned to a repository revision, a size and a sha256.

The file is TOML so that a person can review it in a diff. `dump_lock` writes the one canonical form (the committed
weights.lock is exactly `dump_lock(load_lock(...))`), so recording a hash rewrites the file without reshuffling it.

Format (version 1)::

    version = 1

    [[component]]
    name = "checkpoint"                 # unique; what `ltxserve weights pull --component` names
    description = "..."
    repo = "Lightricks/LTX-Video"       # Hugging Face repository
    revision = "<40 hex digits>"        # exact commit; "unresolved" = not pinned yet: pull refuses it
    revision_note = "..."               # optional: how the revision was found, or why it is unresolved
    optional = false                    # optional components are pulled only when asked for

    [[component.file]]
    path = "ltxv-13b-0.9.7-dev.safetensors"   # path inside the repository
    dest = "ltxv-13b-0.9.7-dev.safetensors"   # path inside the weights folder (the layout load_components reads)
    size = 123                                # bytes; optional until known
    sha256 = "<64 hex digits>"                # "unknown" until pull (from the Hub) / import records it
    sha256_source = "..."                     # where the hash came from
    verified = false                          # true once the hash was confirmed against the publisher

The shipped lock lives inside the package (ltxserve/weights/weights.lock, read with importlib.resources) so that a
wheel install finds it; the source tree's top-level weights.lock is a symlink to it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Iterable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

LOCK_VERSION = 1
UNKNOWN_SHA256 = "unknown"
UNRESOLVED_REVISION = "unresolved"
LOCK_FILE_NAME = "weights.lock"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

HEADER = """\
# weights.lock: every weight file ltxserve loads, pinned (see ltxserve/weights/lock.py for the format).
# `ltxserve weights pull` confirms every file at these revisions with the Hub's API, downloads them and checks every
# sha256; the server serves only weights that match. Where a hash or size is missing (or only known from a mirror)
# `pull` records the publisher's and says so; `verified = true` only where it was checked against the publisher.
# This file is rewritten by `ltxserve weights` in one canonical form; edit it by hand in the same form.
"""


class LockError(ValueError):
    """weights.lock is malformed, or asks for something it cannot give (an unknown component, an unpinned revision)."""


@dataclass(frozen=True)
class LockedFile:
    path: str
    dest: str
    sha256: str = UNKNOWN_SHA256
    size: int | None = None
    sha256_source: str = ""
    verified: bool = False

    @property
    def hash_known(self) -> bool:
        return self.sha256 != UNKNOWN_SHA256


@dataclass(frozen=True)
class LockedComponent:
    name: str
    repo: str
    revision: str
    files: tuple[LockedFile, ...]
    description: str = ""
    revision_note: str = ""
    optional: bool = False

    @property
    def revision_resolved(self) -> bool:
        return bool(_REVISION.match(self.revision))


@dataclass(frozen=True)
class WeightsLock:
    components: tuple[LockedComponent, ...]
    version: int = LOCK_VERSION
    path: Path | None = field(default=None, compare=False)

    def component(self, name: str) -> LockedComponent:
        for c in self.components:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.components)
        raise LockError(f"no component {name!r} in weights.lock (components: {known})")

    def select(self, names: Iterable[str] | None = None, *, include_optional: bool = False) -> list[LockedComponent]:
        """The named components (all required ones, plus optional ones if asked, when `names` is None)."""
        if names:
            return [self.component(n) for n in names]
        return [c for c in self.components if include_optional or not c.optional]

    def with_file(self, component: str, new: LockedFile) -> WeightsLock:
        """A copy with one file entry (matched by dest) replaced."""
        target = self.component(component)
        if not any(f.dest == new.dest for f in target.files):
            raise LockError(f"component {component!r} has no file {new.dest!r}")
        files = tuple(new if f.dest == new.dest else f for f in target.files)
        comps = tuple(replace(c, files=files) if c.name == component else c for c in self.components)
        return replace(self, components=comps)

    def _file(self, component: str, dest: str) -> LockedFile:
        current = next((f for f in self.component(component).files if f.dest == dest), None)
        if current is None:
            raise LockError(f"component {component!r} has no file {dest!r}")
        return current

    def with_recorded(
        self, component: str, dest: str, *, sha256: str, size: int, source: str, verified: bool = False
    ) -> WeightsLock:
        """Fill in a file's unknown hash (and missing size) from a download or import; known values are kept."""
        current = self._file(component, dest)
        updated = replace(
            current,
            sha256=current.sha256 if current.hash_known else sha256,
            sha256_source=current.sha256_source if current.hash_known else source,
            size=current.size if current.size is not None else size,
            verified=current.verified if current.hash_known else verified,
        )
        return self if updated == current else self.with_file(component, updated)

    def with_publisher(self, component: str, dest: str, *, sha256: str, size: int, source: str) -> WeightsLock:
        """Set a file's hash and size to the publisher's own (the Hub's metadata at the pinned revision): they
        replace unconfirmed values, and the entry becomes verified."""
        current = self._file(component, dest)
        if current.verified and ((current.hash_known and current.sha256 != sha256) or current.size not in (None, size)):
            raise LockError(f"{dest}: the lock's confirmed sha256/size differ from the publisher's")
        updated = replace(current, sha256=sha256, size=size, sha256_source=source, verified=True)
        return self if updated == current else self.with_file(component, updated)

    def with_size(self, component: str, dest: str, size: int) -> WeightsLock:
        current = self._file(component, dest)
        return self if current.size == size else self.with_file(component, replace(current, size=size))

    def with_revision(self, component: str, revision: str, note: str = "") -> WeightsLock:
        if not _REVISION.match(revision):
            raise LockError(f"a revision must be a full 40-hex-digit commit id, got {revision!r}")
        self.component(component)
        comps = tuple(
            replace(c, revision=revision, revision_note=note or c.revision_note) if c.name == component else c
            for c in self.components
        )
        return replace(self, components=comps)


# --- reading -------------------------------------------------------------------------------------------------------


def _require(table: dict, key: str, kind: type, where: str) -> object:
    if key not in table:
        raise LockError(f"{where}: missing {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LockError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _optional(table: dict, key: str, kind: type, default: object, where: str) -> object:
    return _require(table, key, kind, where) if key in table else default


def _parse_file(table: dict, where: str) -> LockedFile:
    path = str(_require(table, "path", str, where))
    dest = str(_optional(table, "dest", str, path, where))
    sha = str(_optional(table, "sha256", str, UNKNOWN_SHA256, where))
    size = _optional(table, "size", int, None, where)
    where = f"{where} ({dest})"
    if sha != UNKNOWN_SHA256 and not _SHA256.match(sha):
        raise LockError(f'{where}: sha256 must be 64 lowercase hex digits or "unknown", got {sha!r}')
    if size is not None and int(size) < 0:  # type: ignore[arg-type]
        raise LockError(f"{where}: size must not be negative")
    posix = PurePosixPath(dest)
    if posix.is_absolute() or ".." in posix.parts or not posix.parts or "\\" in dest:
        raise LockError(f"{where}: dest must be a relative path inside the weights folder")
    return LockedFile(
        path=path,
        dest=dest,
        sha256=sha,
        size=size,  # type: ignore[arg-type]
        sha256_source=str(_optional(table, "sha256_source", str, "", where)),
        verified=bool(_optional(table, "verified", bool, False, where)),
    )


def _parse_component(table: dict, index: int) -> LockedComponent:
    where = f"weights.lock component #{index + 1}"
    name = str(_require(table, "name", str, where))
    where = f"weights.lock component {name!r}"
    repo = str(_require(table, "repo", str, where))
    if not _REPO.match(repo):
        raise LockError(f"{where}: repo must look like 'owner/name', got {repo!r}")
    revision = str(_require(table, "revision", str, where))
    if revision != UNRESOLVED_REVISION and not _REVISION.match(revision):
        raise LockError(
            f'{where}: revision must be a full 40-hex-digit commit id or "unresolved", got {revision!r} '
            "(a branch name such as 'main' moves; a short id cannot be used in a download URL)"
        )
    files_raw = _require(table, "file", list, where)
    files = tuple(_parse_file(f, f"{where} file #{i + 1}") for i, f in enumerate(files_raw))  # type: ignore[arg-type]
    if not files:
        raise LockError(f"{where}: lists no files")
    return LockedComponent(
        name=name,
        repo=repo,
        revision=revision,
        files=files,
        description=str(_optional(table, "description", str, "", where)),
        revision_note=str(_optional(table, "revision_note", str, "", where)),
        optional=bool(_optional(table, "optional", bool, False, where)),
    )


def parse_lock(text: str, path: Path | None = None) -> WeightsLock:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"weights.lock is not valid TOML: {exc}") from None
    version = data.get("version")
    if version != LOCK_VERSION:
        raise LockError(f"weights.lock version {version!r} is not supported (expected {LOCK_VERSION})")
    raw = data.get("component", [])
    if not isinstance(raw, list) or not raw:
        raise LockError("weights.lock lists no [[component]] tables")
    components = tuple(_parse_component(c, i) for i, c in enumerate(raw))
    names = [c.name for c in components]
    dests = [f.dest for c in components for f in c.files]
    for label, values in (("component name", names), ("file dest", dests)):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise LockError(f"weights.lock: duplicate {label}: {', '.join(dupes)}")
    return WeightsLock(components=components, version=LOCK_VERSION, path=path)


def load_lock(path: Path | str) -> WeightsLock:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockError(f"weights lock file not found: {path}") from None
    return parse_lock(text, path)


# --- writing -------------------------------------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes), once non-ASCII is kept as is.
    return json.dumps(value, ensure_ascii=False)


def dump_lock(lock: WeightsLock) -> str:
    out = [HEADER, f"version = {lock.version}\n"]
    for c in lock.components:
        out.append("\n[[component]]\n")
        out.append(f"name = {_toml_str(c.name)}\n")
        if c.description:
            out.append(f"description = {_toml_str(c.description)}\n")
        out.append(f"repo = {_toml_str(c.repo)}\n")
        out.append(f"revision = {_toml_str(c.revision)}\n")
        if c.revision_note:
            out.append(f"revision_note = {_toml_str(c.revision_note)}\n")
        out.append(f"optional = {'true' if c.optional else 'false'}\n")
        for f in c.files:
            out.append("\n[[component.file]]\n")
            out.append(f"path = {_toml_str(f.path)}\n")
            out.append(f"dest = {_toml_str(f.dest)}\n")
            if f.size is not None:
                out.append(f"size = {f.size}\n")
            out.append(f"sha256 = {_toml_str(f.sha256)}\n")
            if f.sha256_source:
                out.append(f"sha256_source = {_toml_str(f.sha256_source)}\n")
            out.append(f"verified = {'true' if f.verified else 'false'}\n")
    return "".join(out)


def write_lock(lock: WeightsLock, path: Path | str | None = None) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a lock."""
    target = Path(path) if path is not None else lock.path
    if target is None:
        raise LockError("write_lock needs a path")
    text = dump_lock(lock)
    parse_lock(text)  # never write a file we could not read back
    fd, tmp = tempfile.mkstemp(prefix=".weights.lock.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def default_lock_path() -> Path:
    """The weights.lock shipped inside the package (ltxserve/weights/weights.lock), found through importlib.resources
    so that wheel and pip installs serve as the source tree does."""
    from importlib.resources import as_file, files

    resource = files("ltxserve.weights").joinpath(LOCK_FILE_NAME)
    with as_file(resource) as path:  # a real file for every ordinary install (wheels unpack to disk)
        return Path(path)


def resolve_lock_path(configured: Path | str | None) -> Path:
    return Path(configured) if configured else default_lock_path()
