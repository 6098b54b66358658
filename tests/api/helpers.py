"""Small helpers for driving the queue over HTTP in tests."""

from __future__ import annotations

import base64
import io
import time

import httpx
from PIL import Image


def png_data_uri(width: int = 16, height: int = 12, color=(10, 200, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def submit(client: httpx.Client, endpoint: str, body: dict, **kw) -> dict:
    r = client.post(f"/queue/{endpoint}", json=body, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def wait_completed(client: httpx.Client, status_url: str, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = client.get(status_url, params={"logs": "1"})
        body = r.json()
        if body["status"] == "COMPLETED":
            assert r.status_code == 200
            return body
        assert r.status_code == 202, r.text
        time.sleep(0.05)
    raise TimeoutError(f"not completed: {status_url}")


def wait_state(client: httpx.Client, status_url: str, state: str, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(status_url).json()
        if body["status"] == state:
            return body
        time.sleep(0.05)
    raise TimeoutError(f"never reached {state}: {status_url}")
