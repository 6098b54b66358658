"""An API-only server (no workers) on loopback, in this process: uvicorn serving create_app over a real socket, so
tests see real HTTP (keep-alive, early answers) and can stub the resolver of the address policy."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from ltxserve.config import Settings
from ltxserve.engine.contract import load_specs
from ltxserve.jobs.sqlite import SqliteJobStore
from tests.fixtures_server import free_port

SPECS = ["ltxserve.engine.schema:SPEC", "tests.endpoints_for_tests:STEPS", "tests.endpoints_for_tests:ECHO"]


@dataclass
class ApiServer:
    base_url: str
    settings: Settings
    store: SqliteJobStore
    port: int

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kw)


@pytest.fixture
def api_server_factory(tmp_path):
    from ltxserve.api.app import create_app

    running = []

    def make(**settings_kw) -> ApiServer:
        port = free_port()
        data = tmp_path / f"api{len(running)}"
        settings = Settings(data_dir=data, port=port, endpoints=SPECS, **settings_kw)
        settings.files_dir.mkdir(parents=True, exist_ok=True)
        store = SqliteJobStore(settings.db_path)
        app = create_app(settings, store, load_specs(SPECS))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        assert server.started, "API server did not start"
        running.append((server, thread, store))
        return ApiServer(base_url=f"http://127.0.0.1:{port}", settings=settings, store=store, port=port)

    yield make
    for server, thread, store in running:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


@pytest.fixture
def api_server(api_server_factory) -> ApiServer:
    return api_server_factory()


def png_bytes(width: int, height: int, color=(0, 0, 0)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, kind: str = "image/png") -> str:
    import base64

    return f"data:{kind};base64," + base64.b64encode(data).decode()


def repo_path() -> Path:
    return Path(__file__).resolve().parents[2]
