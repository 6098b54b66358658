"""A wheel install serves: the package ships weights.lock and its model configs, and finds them without the source
tree. Builds a wheel from a copy of the package, installs it into a fresh venv that borrows this environment's
dependencies, and runs `ltxserve weights show` from an unrelated folder."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def test_a_wheel_install_finds_the_shipped_lock(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ltxserve", src / "ltxserve", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, cwd=tmp_path)
    [wheel] = wheels.glob("ltxserve-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies come from this environment (a plain path: its editable ltxserve is not activated).
    here = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    Path(purelib, "borrowed-deps.pth").write_text("\n".join(here) + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "LTXSERVE_"))}
    where = subprocess.run([py, "-c", "import ltxserve; print(ltxserve.__file__)"], cwd=tmp_path, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where  # the installed wheel, not the source tree
    shown = subprocess.run([venv / "bin" / "ltxserve", "weights", "show", "--weights-dir", str(tmp_path / "w")],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "ltxv-13b-0.9.7-dev.safetensors" in shown.stdout and "8984fa25007f" in shown.stdout
    assert f"lock: {venv}" in shown.stdout  # read from inside the installed package
