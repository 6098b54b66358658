"""`ltxserve weights pull|verify|import DIR|show|pin`: argument builders and the command's entry point.

Wire into the main CLI with ``add_weights_arguments(subparsers)``; the parser's ``func`` is `weights_main`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Callable

from ltxserve.cli_flags import add_settings_flags, settings_from_args
from ltxserve.config import Settings
from ltxserve.logs import configure_logging
from ltxserve.weights.fetch import FetchError, latest_revision, pull_weights
from ltxserve.weights.lock import LockError
from ltxserve.weights.provision import load_settings_lock, save_recorded
from ltxserve.weights.store import WeightsError, import_weights, show_weights, verify_weights


def _add_common(parser: argparse.ArgumentParser, *, selection: bool = True) -> None:
    add_settings_flags(parser, ("weights_dir", "weights_lock", "log_level"))
    if selection:
        parser.add_argument(
            "--component", action="append", metavar="NAME", help="only this lock component (repeatable)"
        )
        parser.add_argument("--optional", action="store_true", help="include optional components (fp8 transformer)")


def add_weights_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "weights", help="download, verify, import and list the pinned model weights (weights.lock)"
    )
    sub = parser.add_subparsers(dest="weights_command", required=True, metavar="pull|verify|import|show|pin")

    pull = sub.add_parser(
        "pull", help="confirm every file with the Hub at its pinned revision, then download what is missing "
        "(huggingface_hub: resumable, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE), verified"
    )
    _add_common(pull)
    add_settings_flags(pull, ("weights_pull_workers", "weights_base_url"))
    pull.add_argument(
        "--no-record",
        action="store_true",
        help='refuse files whose sha256 is "unknown" in the lock instead of recording the publisher\'s',
    )
    pull.add_argument("--no-progress", action="store_true", help="no progress bar")

    verify = sub.add_parser("verify", help="hash the files on disk and compare them with the lock")
    _add_common(verify)
    verify.add_argument("--quick", action="store_true", help="trust earlier hashes of files unchanged since")

    imp = sub.add_parser("import", help="copy the lock's files from a folder (air-gapped machines), verified")
    imp.add_argument("source", type=Path, metavar="DIR")
    _add_common(imp)
    imp.add_argument("--no-record", action="store_true", help='refuse files whose sha256 is "unknown" in the lock')

    show = sub.add_parser("show", help="what is there, what is missing, sizes")
    _add_common(show, selection=False)

    pin = sub.add_parser("pin", help="set a component's revision to an exact commit id in the lock")
    _add_common(pin, selection=False)
    pin.add_argument("name", help="lock component, e.g. checkpoint")
    pin.add_argument("revision", nargs="?", help="full 40-hex-digit commit id")
    pin.add_argument("--latest", action="store_true",
                     help="ask the Hub for the commit its default branch is at now, and pin that one (trust on first "
                          "use: later pulls fetch exactly this commit)")
    pin.add_argument("--note", default="", help="how the commit was found")
    add_settings_flags(pin, ("weights_base_url",))

    parser.set_defaults(func=weights_main)
    return parser


def weights_main(args: argparse.Namespace, settings: Settings | None = None, out: Callable[[str], None] = print) -> int:
    """Run one `ltxserve weights` subcommand; returns the process exit status (0 ok, 1 not verified, 2 error)."""
    settings = settings_from_args(args, base=settings)
    configure_logging(settings.log_level, settings.log_format, "weights")
    try:
        return _COMMANDS[args.weights_command](args, settings, out)
    except (LockError, WeightsError) as exc:
        if isinstance(exc, FetchError) and exc.lock is not None:
            lock, path = load_settings_lock(settings)
            save_recorded(exc.lock, lock, path, out)
        out(f"error: {exc}")
        return 2


def _pull(args: argparse.Namespace, settings: Settings, out: Callable[[str], None]) -> int:
    lock, path = load_settings_lock(settings)
    result = pull_weights(
        lock,
        settings.weights_dir,
        components=args.component,
        include_optional=args.optional,
        base_url=settings.weights_base_url,
        token=settings.hf_token,
        record=not args.no_record,
        workers=settings.weights_pull_workers,
        progress_bar=not args.no_progress and sys.stderr.isatty(),
        log=out,
    )
    save_recorded(result.lock, lock, path, out)
    out(
        f"downloaded {len(result.downloaded)} file(s), {len(result.already_present)} already present"
        + (", every file confirmed with the Hub at its pinned revision" if result.confirmed else "")
        + (f"; recorded {len(result.recorded)} value(s) in {path}:" if result.recorded else "")
    )
    for line in result.recorded:
        out(f"  {line}")
    out(result.report.summary())
    return 0 if result.report.ok else 1


class _ByteBar:
    """A tqdm bar over bytes hashed or copied, shown only on a terminal (logs and pipes get the summary lines)."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = None
        if sys.stderr.isatty() and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)

    def __call__(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _known_bytes(lock, components, include_optional: bool) -> int:
    return sum(f.size or 0 for c in lock.select(components, include_optional=include_optional) for f in c.files)


def _verify(args: argparse.Namespace, settings: Settings, out: Callable[[str], None]) -> int:
    lock, _ = load_settings_lock(settings)
    bar = _ByteBar(0 if args.quick else _known_bytes(lock, args.component, args.optional), "verify")
    try:
        report = verify_weights(
            lock, settings.weights_dir, components=args.component, include_optional=args.optional, quick=args.quick,
            on_bytes=bar,
        )
    finally:
        bar.close()
    for status in report.statuses:
        out(status.describe())
    out(report.summary())
    return 0 if report.ok else 1


def _import(args: argparse.Namespace, settings: Settings, out: Callable[[str], None]) -> int:
    lock, path = load_settings_lock(settings)
    bar = _ByteBar(_known_bytes(lock, args.component, args.optional), "import")
    try:
        result = import_weights(
            lock,
            args.source,
            settings.weights_dir,
            components=args.component,
            include_optional=args.optional,
            record=not args.no_record,
            on_bytes=bar,
        )
    finally:
        bar.close()
    save_recorded(result.lock, lock, path, out)
    out(f"imported {len(result.imported)} file(s) from {args.source}")
    out(result.report.summary())
    return 0 if result.report.ok else 1


def _show(args: argparse.Namespace, settings: Settings, out: Callable[[str], None]) -> int:
    lock, _ = load_settings_lock(settings)
    out(show_weights(lock, settings.weights_dir))
    return 0


def _pin(args: argparse.Namespace, settings: Settings, out: Callable[[str], None]) -> int:
    lock, path = load_settings_lock(settings)
    if bool(args.revision) == bool(args.latest):
        raise LockError("give either a commit id or --latest")
    if args.latest:
        repo = lock.component(args.name).repo
        args.revision = latest_revision(repo, endpoint=settings.weights_base_url, token=settings.hf_token)
        args.note = args.note or (f"the commit {repo}'s default branch was at when `ltxserve weights pin --latest` "
                                  f"asked the Hub on {date.today().isoformat()} (trust on first use)")
    save_recorded(lock.with_revision(args.name, args.revision, args.note), lock, path, out)
    out(f"{args.name}: pinned to {args.revision}")
    return 0


_COMMANDS = {"pull": _pull, "verify": _verify, "import": _import, "show": _show, "pin": _pin}


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m ltxserve.weights.cli ...`), handy until the main CLI wires the subcommand."""
    parser = argparse.ArgumentParser(prog="ltxserve")
    add_weights_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
