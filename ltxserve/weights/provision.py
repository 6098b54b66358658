"""What `ltxserve serve` does about weights before loading the 13B model: verify, pull on first start, or refuse.

Once the weights are present and verified this touches no network: the check reads the lock and the folder only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from ltxserve.config import Settings
from ltxserve.weights.fetch import FetchError, pull_weights
from ltxserve.weights.lock import WeightsLock, default_lock_path, load_lock, resolve_lock_path, write_lock
from ltxserve.weights.store import WeightsError, verify_weights

log = logging.getLogger("ltxserve.weights")


class WeightsNotReady(WeightsError):
    """The weights folder does not match weights.lock and could not be brought up to it."""


def load_settings_lock(settings: Settings) -> tuple[WeightsLock, Path]:
    """The lock in use. A configured lock path that does not exist yet (the container's /weights/weights.lock) is
    first seeded with the shipped lock, so hashes recorded on the first download are kept beside the weights."""
    path = resolve_lock_path(settings.weights_lock)
    shipped = default_lock_path()
    if not path.exists() and path != shipped and shipped.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_lock(load_lock(shipped), path)
        log.info("weights: seeded %s from %s", path, shipped)
    return load_lock(path), path


def save_recorded(lock: WeightsLock, original: WeightsLock, path: Path, say: Callable[[str], None]) -> None:
    """Write newly recorded hashes back to the lock file (or say why not)."""
    if lock == original:
        return
    try:
        write_lock(lock, path)
        say(f"weights: updated {path}")
    except OSError as exc:
        say(f"weights: could not write recorded hashes to {path} ({exc}); they will be recomputed next time")


def ensure_weights(settings: Settings, *, say: Callable[[str], None] | None = None) -> Path:
    """Return the verified weights folder, pulling missing files first when settings.weights_auto_pull allows.

    Several workers (one per GPU) may call this at once: the pull's inter-process lock lets one download while the
    others wait, and they then find the files in place and only verify them."""
    say = say or log.info
    lock, lock_path = load_settings_lock(settings)
    weights_dir = Path(settings.weights_dir)
    report = verify_weights(lock, weights_dir, quick=True)
    if report.ok:
        return weights_dir
    if not settings.weights_auto_pull:
        raise WeightsNotReady(
            f"the weights in {weights_dir} are not ready and automatic pulling is off:\n{report.summary()}\n"
            "Run `ltxserve weights pull` (or `ltxserve weights import DIR`)."
        )
    say(f"weights: {weights_dir} is not complete:\n{report.summary()}\npulling the pinned files (a one-time download)")
    try:
        result = pull_weights(
            lock,
            weights_dir,
            base_url=settings.weights_base_url,
            token=settings.hf_token,
            workers=settings.weights_pull_workers,
            confirm="when-downloading",
            progress_bar=sys.stderr.isatty(),  # bars for a person at a terminal; logs get a line per file
            log=say,
        )
    except FetchError as exc:
        if exc.lock is not None:
            save_recorded(exc.lock, lock, lock_path, say)
        raise
    save_recorded(result.lock, lock, lock_path, say)
    if not result.report.ok:
        raise WeightsNotReady(f"weights still not ready after pulling:\n{result.report.summary()}")
    return weights_dir
