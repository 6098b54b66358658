"""Who may import whom (DESIGN.md "Boundaries"), checked on the source (every import, lazy ones included) and in a
fresh interpreter: the API never imports the worker; the worker knows the JobStore interface, never a concrete
store; and only the storage module (with config, which defines the setting, and the wiring) knows the files folder."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ltxserve"


def imports_of(path: Path, module: str | None = None) -> set[str]:
    """Every module a file imports, at the top or inside functions; relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module or ".".join(path.relative_to(REPO).with_suffix("").parts)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from ltxserve import worker` names a module
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        hits = sorted(m for m in imports_of(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if hits:
            bad[str(path.relative_to(REPO))] = hits
    return bad


def test_the_import_scan_sees_lazy_and_relative_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..worker import runner\n    import ltxserve.jobs.sqlite\n")
    found = imports_of(probe, "ltxserve.api.probe")
    assert {"ltxserve.worker", "ltxserve.worker.runner", "ltxserve.jobs.sqlite"} <= found


def test_api_never_imports_the_worker():
    assert offenders("api", ("ltxserve.worker", "ltxserve.wiring")) == {}


def test_worker_never_imports_a_concrete_store_or_the_wiring():
    assert offenders("worker", ("ltxserve.jobs.sqlite", "ltxserve.jobs.redis_store", "ltxserve.wiring")) == {}


@pytest.mark.parametrize("entry, forbidden", [
    ("ltxserve.api.app", "ltxserve.worker"),
    ("ltxserve.api.server", "ltxserve.worker"),
    ("ltxserve.worker.runner", "ltxserve.jobs.sqlite"),
    ("ltxserve.worker.supervisor", "ltxserve.jobs.sqlite"),
])
def test_nothing_pulls_them_in_indirectly(entry, forbidden):
    code = (f"import sys, {entry}\n"
            f"bad = sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden!r} + '.'))\n"
            f"print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def test_only_storage_knows_where_files_live():
    allowed = {"ltxserve/config.py", "ltxserve/storage.py", "ltxserve/wiring.py"}
    users = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if "files_dir" in p.read_text()}
    assert users <= allowed, users - allowed
