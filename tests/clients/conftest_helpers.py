"""Shared set-up for the official-client tests: the npm install, and running the client drivers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def ensure_js_client() -> Path:
    """Install @fal-ai/client (pinned in package-lock.json) once; fail loudly rather than skip where npm exists."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed on this machine")
    if not (HERE / "node_modules" / "@fal-ai" / "client").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=600)
    return HERE / "js" / "drive.mjs"


def run_js(scenario: str, base_url: str, endpoint: str, payload: dict, timeout: float = 120,
           extra_env: dict | None = None) -> dict:
    script = ensure_js_client()
    env = {**os.environ, "LTX_BASE": base_url, "FAL_ENDPOINT": endpoint, "FAL_INPUT": json.dumps(payload),
           **(extra_env or {})}
    r = subprocess.run(["node", str(script), scenario], cwd=HERE, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.stdout, f"no output from {scenario}: {r.stderr}"
    out = json.loads(r.stdout)
    if r.returncode != 0:
        raise AssertionError(f"{scenario} failed: {out}\n{r.stderr}")
    return out


def run_py(scenario: str, server, endpoint: str, payload: dict, extra_env: dict | None = None,
           timeout: float = 180) -> dict:
    """The Python client in a subprocess, pointed at the server by configuration only."""
    host = f"127.0.0.1:{server.port}"
    env = {
        **os.environ,
        "FAL_KEY": "py-test-key",
        "FAL_RUN_HOST": f"{host}/run",
        "FAL_QUEUE_RUN_HOST": f"{host}/queue",
        "SSL_CERT_FILE": str(server.tls_dir / "ca.pem"),
        "FAL_ENDPOINT": endpoint,
        "FAL_INPUT": json.dumps(payload),
        "PYTHONPATH": str(REPO),
        **(extra_env or {}),
    }
    r = subprocess.run([sys.executable, "-m", "tests.clients.py_drive", scenario], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{scenario} failed:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])
