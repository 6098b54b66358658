"""The `ltxserve` command: serve, generate, tls init, weights, doctor.

Every flag overrides its LTXSERVE_* environment variable; what neither sets keeps the Settings default.
Subcommands import their machinery lazily, so `ltxserve serve` starts without importing torch in the API process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltxserve.config import Settings


def settings_from_args(args: argparse.Namespace, **extra) -> Settings:
    """Settings from the environment, overridden by the flags the user actually gave."""
    overrides = {}
    mapping = {
        "host": "host", "port": "port", "data_dir": "data_dir", "workers": "workers", "model": "model",
        "api_key": "api_keys", "tls_cert": "tls_cert", "tls_key": "tls_key", "public_url": "public_url",
        "allow_unauthenticated_public": "allow_unauthenticated_public", "endpoint": "endpoints",
        "device": "device", "dtype": "dtype", "memory": "memory",
    }
    for arg, field in mapping.items():
        value = getattr(args, arg, None)
        if value is not None and value is not False:
            overrides[field] = value
    overrides.update(extra)
    return Settings(**overrides)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the fal queue API with GPU workers")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--data-dir", type=Path, help="jobs database and files (default ./data)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per GPU, else one)")
    p.add_argument("--model", help="auto | tiny | PATH (default auto)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", help="auto | bf16 | fp16 | fp32 | fp8")
    p.add_argument("--memory", help="auto | gpu | offload | sequential")
    p.add_argument("--api-key", action="append", metavar="KEY", help="accepted API key (repeatable)")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM), e.g. from `ltxserve tls init`")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--public-url", help="base URL clients reach this server at (for the URLs it hands out)")
    p.add_argument("--allow-unauthenticated-public", action="store_true",
                   help="allow a non-loopback --host with no API key")
    p.add_argument("--endpoint", action="append", metavar="MODULE:SPEC",
                   help="endpoint spec to serve (repeatable; default the LTX image-to-video endpoint)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ltxserve.api.server import ConfigurationError, serve
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltxserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_generate(sub)
    _add_tls(sub)
    from ltxserve.weights.cli import add_weights_arguments
    from ltxserve.doctor import add_doctor_arguments

    add_weights_arguments(sub)
    add_doctor_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
