"""The `ltxserve` command: serve, worker, generate, tls init, weights, doctor.

Every flag overrides its LTXSERVE_* environment variable; what neither sets keeps the Settings default (one mapping
for all commands: ltxserve/cli_flags.py). Subcommands import their machinery lazily, so `ltxserve serve` starts
without importing torch in the API process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltxserve import __version__
from ltxserve.cli_flags import SettingsError, add_settings_flags, settings_from_args

SERVE_SETTINGS = (
    "host", "port", "data_dir", "workers", "model", "device", "dtype", "fp8_matmul", "memory", "use_triton_kernels",
    "attention_backend", "compile_blocks", "api_keys", "tls_cert",
    "tls_key", "public_url", "allow_unauthenticated_public", "endpoints", "weights_dir", "worker_max_failed_starts",
    "log_level", "log_format", "access_log", "safety_checker", "safety_checker_threshold", "safety_checker_frames",
    "store", "files", "worker_lost_after_seconds",
    "prompt_enhancer_dir", "prompt_enhancer_caption_tokens", "prompt_enhancer_max_tokens",
)
# A worker node: the engine's settings, the shared store and files, and the public URL its output URLs start with.
WORKER_SETTINGS = (
    "store", "files", "data_dir", "public_url", "gpu", "model", "device", "dtype", "fp8_matmul", "memory",
    "use_triton_kernels", "attention_backend", "compile_blocks", "endpoints", "weights_dir", "max_attempts",
    "worker_heartbeat_seconds", "log_level", "log_format",
    "safety_checker", "safety_checker_threshold", "safety_checker_frames",
    "prompt_enhancer_dir", "prompt_enhancer_caption_tokens", "prompt_enhancer_max_tokens",
)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the fal queue API with GPU workers",
                       description="Serve the fal queue API (/queue, /run, /api/fal/proxy) with one worker per GPU.")
    add_settings_flags(p, SERVE_SETTINGS)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ltxserve.api.server import ConfigurationError
    from ltxserve.wiring import serve
    from ltxserve.worker.supervisor import WorkersFailed

    try:
        serve(settings_from_args(args))
    except ConfigurationError as exc:
        print(f"ltxserve: {exc}", file=sys.stderr)
        return 2
    except WorkersFailed as exc:
        print(f"ltxserve: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker", help="run one GPU worker node in the foreground (jobs from --store, files in --files)",
        description="Run one worker in the foreground: it claims jobs from the store that API nodes "
                    "(`ltxserve serve --workers 0`) write, and stores outputs under --files. Give it the API's "
                    "--public-url so that output URLs point at the API. SIGTERM or Ctrl-C stops it cleanly.")
    add_settings_flags(p, WORKER_SETTINGS)
    p.set_defaults(func=_worker)


def _worker(args: argparse.Namespace) -> int:
    from ltxserve.wiring import worker

    worker(settings_from_args(args))
    return 0


def _add_tls(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tls", help="local TLS for the Python client (which only speaks https)")
    tsub = p.add_subparsers(dest="tls_command", required=True)
    init = tsub.add_parser("init", help="write DIR/ca.pem, DIR/server.pem, DIR/server.key")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--name", action="append", default=[], help="extra DNS name for the server certificate")
    init.set_defaults(func=_tls_init)


def _tls_init(args: argparse.Namespace) -> int:
    from ltxserve.tls import init_tls

    paths = init_tls(args.directory, extra_names=tuple(args.name))
    print(f"CA certificate:     {paths['ca']}   (clients: SSL_CERT_FILE={paths['ca']})")
    print(f"server certificate: {paths['cert']}")
    print(f"server key:         {paths['key']}")
    print(f"serve with: ltxserve serve --tls-cert {paths['cert']} --tls-key {paths['key']}")
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from ltxserve.engine.offline import add_generate_arguments

    p = sub.add_parser("generate", help="generate videos offline (no server), from flags, JSON or JSONL")
    add_generate_arguments(p)
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from ltxserve.engine.offline import main as generate_main

    return int(generate_main(args) or 0)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage is in --help); subcommand parsers inherit this class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ltxserve", description="Self-hosted LTX-Video 0.9.7 13B image-to-video behind fal.ai's queue protocol.",
        epilog="Every flag also has an LTXSERVE_* environment variable (shown in each command's --help).",
    )
    parser.add_argument("--version", action="version", version=f"ltxserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_worker(sub)
    _add_generate(sub)
    _add_tls(sub)
    from ltxserve.weights.cli import add_weights_arguments
    from ltxserve.doctor import add_doctor_arguments

    add_weights_arguments(sub)
    add_doctor_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:  # a bad LTXSERVE_* value: one line each, no traceback
        for line in str(exc).splitlines():
            print(f"ltxserve: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
