"""Dockerfile.cuda: no Docker engine runs here, so check what can be checked without one.

The file parses into known instructions; everything it copies or runs exists in this repository; its environment
variables are real settings; the entry point is the `ltxserve` console script from pyproject, and that script's
`serve` command is the one the tests run; the health check hits the real /readyz route.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from ltxserve.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.cuda"
KNOWN = {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD",
         "LABEL"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and backslash continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _all(instructions, keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def _env(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _all(instructions, "ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", args):
            env[key] = value
    return env


def test_parses_into_known_instructions(instructions):
    assert instructions[0][0] in ("ARG", "FROM")
    unknown = {kw for kw, _ in instructions} - KNOWN
    assert not unknown, f"unknown Dockerfile instructions: {unknown}"


def test_base_is_a_cuda_runtime_image(instructions):
    arg_defaults = dict(re.findall(r"(\w+)=(\S+)", " ".join(_all(instructions, "ARG"))))
    image = _all(instructions, "FROM")[0]
    image = re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults[m.group(1)], image)
    assert image.startswith("nvidia/cuda:") and "runtime" in image


def test_entry_point_is_the_console_script_serve(instructions):
    [entry] = _all(instructions, "ENTRYPOINT")
    assert json.loads(entry) == ["ltxserve", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ltxserve" in scripts
    # The script's target is the CLI whose `serve` the tests run: it must import and know `serve`.
    module, func = scripts["ltxserve"].split(":")
    code = (
        f"import sys; from {module} import {func} as main; sys.argv = ['ltxserve', 'serve', '--help']; "
        "sys.exit(main())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--host" in result.stdout and "--port" in result.stdout


def test_runs_as_a_non_root_user(instructions):
    users = _all(instructions, "USER")
    assert users and users[-1] not in ("root", "0")
    created = " ".join(_all(instructions, "RUN"))
    assert "useradd" in created and users[-1] in created
    # The user is switched to before the entry point.
    order = [kw for kw, _ in instructions]
    assert max(i for i, kw in enumerate(order) if kw == "USER") < order.index("ENTRYPOINT")


def test_environment_variables_are_real_settings(instructions):
    env = _env(instructions)
    fields = {f"LTXSERVE_{name.upper()}" for name in Settings.model_fields}
    ltx = {k for k in env if k.startswith("LTXSERVE_")}
    assert ltx, "the image configures nothing through LTXSERVE_* variables"
    assert ltx <= fields, f"not settings: {sorted(ltx - fields)}"
    assert env["LTXSERVE_HOST"] == "0.0.0.0"
    # Applying the image's environment gives the intended settings.
    settings = Settings(**{k.removeprefix("LTXSERVE_").lower(): v for k, v in env.items() if k in ltx})
    assert str(settings.weights_dir) == "/weights" and str(settings.data_dir) == "/data"


def test_weights_and_data_are_volumes(instructions):
    env = _env(instructions)
    volumes = set(json.loads(_all(instructions, "VOLUME")[0]))
    assert {env["LTXSERVE_WEIGHTS_DIR"], env["LTXSERVE_DATA_DIR"]} <= volumes
    assert Path(env["LTXSERVE_WEIGHTS_LOCK"]).parent.as_posix() == env["LTXSERVE_WEIGHTS_DIR"]
    assert _all(instructions, "EXPOSE") == [env["LTXSERVE_PORT"]]


def test_health_check_hits_the_readyz_route(instructions):
    [health] = _all(instructions, "HEALTHCHECK")
    assert "CMD" in health
    path = re.search(r"https?://[^/\s\"]+(/[\w/]*)", health).group(1)
    assert path == "/readyz"
    sources = "\n".join(p.read_text() for p in (ROOT / "ltxserve" / "api").rglob("*.py"))
    assert re.search(r"""["']/readyz["']""", sources), "no /readyz route in ltxserve/api"


def test_copied_and_installed_things_exist(instructions):
    for args in _all(instructions, "COPY"):
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"
    run = " ".join(_all(instructions, "RUN"))
    assert "pip install -e /opt/ltxserve" in run and (ROOT / "pyproject.toml").exists()
    # Every `ltxserve` subcommand the build runs is a real one (here only --help).
    for sub in re.findall(r"ltxserve (\w[\w-]*)", run):
        assert sub in ("serve", "weights", "doctor", "generate", "tls"), sub


def test_build_context_leaves_out_local_state():
    ignore = (ROOT / "Dockerfile.cuda.dockerignore").read_text().split()
    for local in (".venv", ".git", "weights", "data"):
        assert any(fnmatch(local, pattern) for pattern in ignore), f"{local} would be copied into the image"
    assert not any(fnmatch("ltxserve", pattern) or fnmatch("weights.lock", pattern) for pattern in ignore)
