"""`ltxserve weights pull`: confirm the lock with the Hub, then download its files at their pinned revisions.

Two steps, both through huggingface_hub so that its behaviour comes for free (resumed transfers, Xet storage,
HF_TOKEN, HF_ENDPOINT mirrors, HF_HUB_OFFLINE):

1. Confirm: `HfApi.get_paths_info(repo, paths, revision=<the lock's commit>, expand=True)` for every selected file.
   Each must exist at that commit; the publisher's size and LFS sha256 must agree with the lock. Where the lock has
   no value (or only an unconfirmed one from a mirror) the publisher's is recorded, and said so.
2. Download what is missing with `hf_hub_download` into a staging folder inside the weights folder, check the
   sha256 (and, for small non-LFS files, the git blob id the Hub published), then move the file to its place. A file
   at its final path is always a verified one.

One process pulls at a time: an inter-process file lock in the weights folder makes the others wait, and they then
find the files present and only verify them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import quote

from filelock import FileLock, Timeout

from ltxserve.weights.lock import LockError, LockedComponent, LockedFile, WeightsLock
from ltxserve.weights.store import (
    FileState,
    VerifiedCache,
    VerifyReport,
    WeightsError,
    check_file,
    fsync_dir,
    sha256_file,
    utc_now,
    verify_weights,
)

DEFAULT_BASE_URL = "https://huggingface.co"
STAGING_RELPATH = Path(".ltxserve") / "download"
PULL_LOCK_RELPATH = Path(".ltxserve") / "pull.lock"
LogFn = Callable[[str], None]


class FetchError(WeightsError):
    """A download or confirmation failed; partial downloads are kept so that the next pull resumes.

    `lock` carries what was recorded before the failure (publisher hashes), so the caller can still save it.
    """

    def __init__(self, message: str, lock: WeightsLock | None = None) -> None:
        super().__init__(message)
        self.lock = lock


def file_url(base_url: str | None, repo: str, revision: str, path: str) -> str:
    return f"{(base_url or DEFAULT_BASE_URL).rstrip('/')}/{repo}/resolve/{revision}/{quote(path)}"


def git_blob_id(path: Path) -> str:
    """The id git (and the Hub's API, as `oid`) gives a file's content: sha1 of "blob <size>\\0" + bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pull_lock(weights_dir: Path) -> FileLock:
    """The inter-process lock one pull holds on a weights folder."""
    path = Path(weights_dir) / PULL_LOCK_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


@dataclass
class PullResult:
    report: VerifyReport
    lock: WeightsLock  # with any newly recorded hashes and sizes
    downloaded: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)  # "dest: what was recorded", for the user to read
    already_present: list[str] = field(default_factory=list)
    confirmed: bool = False  # every selected file was checked against the Hub's metadata


def latest_revision(repo: str, *, endpoint: str | None, token: str | None = None) -> str:
    """The commit the repository's default branch is at now (for `weights pin --latest`: asked once, then pinned)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        sha = HfApi(endpoint=endpoint, token=token).model_info(repo).sha
    except HfHubHTTPError as exc:
        raise FetchError(f"could not ask {endpoint or DEFAULT_BASE_URL} for {repo}'s current commit: {exc}") from None
    if not sha:
        raise FetchError(f"{endpoint or DEFAULT_BASE_URL} did not say which commit {repo} is at")
    return sha


def check_pullable(components: Iterable[LockedComponent], *, record: bool) -> None:
    """Refuse before any byte moves: unpinned revisions, and unknown hashes when not recording."""
    unresolved = [c for c in components if not c.revision_resolved]
    if unresolved:
        names = ", ".join(f"{c.name} ({c.repo})" for c in unresolved)
        raise LockError(
            f"cannot pull {names}: weights.lock has no pinned revision for it (revision = {unresolved[0].revision!r}). "
            "ltxserve never downloads a moving branch such as 'main'. Pin the exact commit with "
            "`ltxserve weights pin NAME COMMIT_SHA` (or `--latest`: the commit the Hub's default branch is at now), or copy the files in with `ltxserve weights import DIR`."
        )
    if not record:
        unknown = [f"{c.name}: {f.dest}" for c in components for f in c.files if not f.hash_known]
        if unknown:
            raise LockError(
                "these files have no sha256 in weights.lock, so a download could not be verified (drop "
                "--no-record to record the publisher's hashes):\n  " + "\n  ".join(unknown)
            )


# --- 1. confirm with the Hub ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedFile:
    size: int
    sha256: str | None  # LFS files: the publisher's sha256; small files are stored in git and have none
    blob_id: str  # git blob id (for LFS files, of the pointer)


def published_files(api, comp: LockedComponent) -> dict[str, PublishedFile]:
    """The Hub's metadata for the component's files at its pinned revision (path -> PublishedFile)."""
    from huggingface_hub.hf_api import RepoFile

    infos = api.get_paths_info(comp.repo, [f.path for f in comp.files], revision=comp.revision, expand=True)
    out = {}
    for info in infos:
        if isinstance(info, RepoFile):
            lfs = info.lfs
            out[info.path] = PublishedFile(
                size=int(info.size), sha256=(lfs["sha256"] if lfs else None), blob_id=info.blob_id
            )
    return out


def confirm_component(
    lock: WeightsLock, comp: LockedComponent, published: dict[str, PublishedFile], *, where: str, say: LogFn,
) -> tuple[WeightsLock, list[str]]:
    """Check the lock's entries against the publisher's; record what the lock lacks. Returns (lock, recorded)."""
    recorded, problems = [], []
    for f in comp.files:
        pub = published.get(f.path)
        if pub is None:
            problems.append(f"{comp.repo}@{comp.revision}: {f.path} does not exist at the pinned revision")
            continue
        if f.verified and f.size is not None and f.size != pub.size:
            problems.append(f"{f.dest}: the lock says {f.size} bytes, the Hub says {pub.size} ({where})")
            continue
        if f.verified and f.hash_known and pub.sha256 and pub.sha256 != f.sha256:
            problems.append(f"{f.dest}: the lock's sha256 {f.sha256} differs from the Hub's {pub.sha256} ({where})")
            continue
        sha = pub.sha256 or (f.sha256 if f.hash_known else None)
        if pub.sha256 and (not f.verified or f.size != pub.size):
            replaced = f" (replaces the unconfirmed {f.sha256[:12]}…)" if f.hash_known and f.sha256 != sha else ""
            lock = lock.with_publisher(
                comp.name, f.dest, sha256=pub.sha256, size=pub.size,
                source=f"the Hub's LFS metadata for {comp.repo}@{comp.revision} ({where}, {utc_now()})",
            )
            recorded.append(f"{f.dest}: sha256 {pub.sha256}, {pub.size} bytes{replaced}")
        elif f.size is None or (not f.verified and f.size != pub.size):
            lock = lock.with_size(comp.name, f.dest, pub.size)
            recorded.append(f"{f.dest}: {pub.size} bytes")
    for line in recorded:
        say(f"weights: recorded from the Hub: {line}")
    if problems:
        raise FetchError("weights.lock does not match the Hub:\n  " + "\n  ".join(problems), lock=lock)
    return lock, recorded


def confirm_with_hub(
    lock: WeightsLock, components: list[LockedComponent], *, endpoint: str | None, token: str | None, say: LogFn,
) -> tuple[WeightsLock, dict[str, PublishedFile], list[str]]:
    """Confirm every selected file; returns the lock with recorded values, the metadata by dest, and what was
    recorded."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    by_dest: dict[str, PublishedFile] = {}
    recorded: list[str] = []
    for comp in components:
        where = f"get_paths_info at {endpoint or DEFAULT_BASE_URL}"
        try:
            published = published_files(api, comp)
        except OfflineModeIsEnabled:
            raise
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise FetchError(_http_refusal(status, comp, str(exc)), lock=lock) from None
        except OSError as exc:  # connection refused, DNS, TLS
            raise FetchError(f"{comp.repo}: the Hub could not be reached ({exc})", lock=lock) from None
        lock, done = confirm_component(lock, lock.component(comp.name), published, where=where, say=say)
        recorded += done
        for f in comp.files:
            by_dest[f.dest] = published[f.path]
    return lock, by_dest, recorded


def _http_refusal(status: int | None, comp: LockedComponent, detail: str) -> str:
    if status == 404:
        return (f"{comp.repo}@{comp.revision}: not found (404): the repository or the pinned revision in "
                f"weights.lock does not exist upstream")
    if status in (401, 403):
        return (f"{comp.repo}: access refused ({status}); if the repository is gated, accept its terms on the Hub and "
                "set HF_TOKEN (or LTXSERVE_HF_TOKEN) to a token that can read it")
    return f"{comp.repo}: the Hub answered {status}: {detail.splitlines()[0] if detail else ''}"


# --- 2. download --------------------------------------------------------------------------------------------------


def _tqdm_class(show: bool):
    from tqdm.auto import tqdm

    if show:
        return tqdm

    class Silent(tqdm):  # huggingface_hub's bars, switched off for logs and tests
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def download_file(
    comp: LockedComponent, f: LockedFile, weights_dir: Path, *, endpoint: str | None, token: str | None,
    published: PublishedFile | None, show_progress: bool,
) -> tuple[str, int]:
    """hf_hub_download into the staging folder, verify, move into place. Returns (sha256, size)."""
    from huggingface_hub import hf_hub_download

    staging = weights_dir / STAGING_RELPATH / comp.name
    try:
        got = Path(hf_hub_download(
            comp.repo, f.path, revision=comp.revision, local_dir=staging, endpoint=endpoint, token=token,
            tqdm_class=_tqdm_class(show_progress),
        ))
    except Exception as exc:  # huggingface_hub raises many kinds; the message names the file either way
        raise FetchError(f"{file_url(endpoint, comp.repo, comp.revision, f.path)}: download failed: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    size = got.stat().st_size
    digest = sha256_file(got)
    problem = None
    if f.size is not None and size != f.size:
        problem = f"{size} bytes, the lock says {f.size}"
    elif f.hash_known and digest != f.sha256:
        problem = f"sha256 {digest}, the lock says {f.sha256}"
    elif published is not None and published.sha256 is None and git_blob_id(got) != published.blob_id:
        problem = f"git blob id {git_blob_id(got)}, the Hub says {published.blob_id}"
    if problem:
        got.unlink(missing_ok=True)
        raise FetchError(f"{comp.repo}@{comp.revision[:12]} {f.path}: {problem}; the download was discarded")
    dest = weights_dir / f.dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, dest)
    fsync_dir(dest.parent)
    return digest, size


def _record_computed(
    result: PullResult, comp: LockedComponent, f: LockedFile, digest: str, size: int, pub: PublishedFile | None,
    say: LogFn,
) -> WeightsLock:
    """Record the sha256 computed for a file the lock had no hash for (checked by its git blob id when known)."""
    how = (f"its git blob id matched the Hub's ({pub.blob_id})" if pub is not None
           else "trust on first use: not confirmed with the Hub")
    result.recorded.append(f"{f.dest}: sha256 {digest} ({how})")
    say(f"weights: recorded {f.dest}: sha256 {digest} ({how})")
    return result.lock.with_recorded(
        comp.name, f.dest, sha256=digest, size=size, verified=pub is not None,
        source=f"computed by `ltxserve weights pull` from {comp.repo}@{comp.revision} on {utc_now()}; {how}",
    )


def pull_weights(
    lock: WeightsLock,
    weights_dir: Path,
    *,
    components: Iterable[str] | None = None,
    include_optional: bool = False,
    base_url: str | None = None,
    token: str | None = None,
    record: bool = True,
    workers: int = 4,
    progress_bar: bool = False,
    confirm: str = "always",
    log: LogFn | None = None,
) -> PullResult:
    """Bring the weights folder up to the lock: confirm with the Hub, download what is missing, verify everything.

    `confirm`: "always" checks every selected file with the Hub (the `weights pull` command); "when-downloading"
    only when something must be fetched (a server start with the weights in place stays offline). Returns the lock
    with newly recorded values for the caller to write.
    """
    say = log or (lambda message: None)
    weights_dir = Path(weights_dir)
    selected = lock.select(components, include_optional=include_optional)
    check_pullable(selected, record=record)
    weights_dir.mkdir(parents=True, exist_ok=True)
    guard = pull_lock(weights_dir)
    try:
        guard.acquire(timeout=0)
    except Timeout:
        say(f"weights: another process is pulling into {weights_dir}; waiting for it to finish")
        guard.acquire()
    try:
        return _pull_locked(lock, weights_dir, selected, base_url=base_url, token=token, record=record,
                            workers=workers, progress_bar=progress_bar, confirm=confirm, say=say)
    finally:
        guard.release()


def _pull_locked(
    lock: WeightsLock, weights_dir: Path, selected: list[LockedComponent], *, base_url: str | None,
    token: str | None, record: bool, workers: int, progress_bar: bool, confirm: str, say: LogFn,
) -> PullResult:
    from huggingface_hub.errors import OfflineModeIsEnabled

    cache = VerifiedCache(weights_dir)
    result = PullResult(report=VerifyReport(), lock=lock)
    ready = all(check_file(weights_dir, c.name, f, cache=cache, quick=True).ok for c in selected for f in c.files)
    published: dict[str, PublishedFile] = {}
    if not ready or confirm == "always":
        try:
            result.lock, published, result.recorded = confirm_with_hub(
                result.lock, selected, endpoint=base_url, token=token, say=say
            )
            result.confirmed = True
        except OfflineModeIsEnabled:
            if not ready:
                raise FetchError(
                    "offline mode (HF_HUB_OFFLINE) is on and the weights are not complete; bring the files with "
                    "`ltxserve weights import DIR`", lock=result.lock
                ) from None
            say("weights: offline mode (HF_HUB_OFFLINE): the files were not confirmed with the Hub")
    # Check again against the lock as confirmed (recorded hashes make files present on disk verifiable).
    todo: list[tuple[LockedComponent, LockedFile]] = []
    for comp in (result.lock.component(c.name) for c in selected):
        for f in comp.files:
            status = check_file(weights_dir, comp.name, f, cache=cache, quick=True)
            if status.ok:
                result.already_present.append(f.dest)
                continue
            pub = published.get(f.dest)
            if status.state is FileState.HASH_UNKNOWN and pub is not None and pub.sha256 is None \
                    and git_blob_id(status.path) == pub.blob_id:
                # A small file already in place (e.g. another process pulled it): the Hub's blob id vouches for it.
                result.lock = _record_computed(result, comp, f, status.sha256, status.size, pub, say)
                result.already_present.append(f.dest)
                continue
            if status.state in (FileState.HASH_MISMATCH, FileState.SIZE_MISMATCH, FileState.HASH_UNKNOWN):
                say(f"weights: {status.describe()}; downloading it again")
                status.path.unlink()
                cache.forget(f.dest)
            todo.append((comp, f))
    cache.save()
    if todo:
        say(f"weights: downloading {len(todo)} file(s) into {weights_dir}")
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {}
        for comp, f in todo:
            say(f"weights: downloading {comp.repo}@{comp.revision[:12]} {f.path} -> {f.dest}")
            futures[pool.submit(
                download_file, comp, f, weights_dir, endpoint=base_url, token=token,
                published=published.get(f.dest), show_progress=progress_bar,
            )] = (comp, f)
        for future in as_completed(futures):
            comp, f = futures[future]
            try:
                digest, size = future.result()
            except WeightsError as exc:
                errors.append(str(exc))
                continue
            cache.record(f.dest, (weights_dir / f.dest).stat(), digest)
            result.downloaded.append(f.dest)
            if not f.hash_known:
                result.lock = _record_computed(result, comp, f, digest, size, published.get(f.dest), say)
    cache.save()
    if errors:
        raise FetchError("weights pull failed:\n  " + "\n  ".join(errors), lock=result.lock)
    shutil.rmtree(weights_dir / STAGING_RELPATH, ignore_errors=True)  # every transfer finished: nothing to resume
    result.report = verify_weights(result.lock, weights_dir, components=[c.name for c in selected], quick=True)
    return result
