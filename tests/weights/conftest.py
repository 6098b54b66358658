"""Fixtures for the weights tests: a tiny lock with real files, and a local HTTP server with Range support."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ltxserve.weights.lock import LockedComponent, LockedFile, WeightsLock, write_lock

REVISION = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """Serves {"/repo/resolve/rev/path": bytes} on 127.0.0.1 with HTTP Range; can cut a transfer short."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # url path -> bytes to send before dropping (once)
    honour_range: bool = True
    requests: list[dict] = field(default_factory=list)
    base_url: str = ""

    def add(self, repo: str, revision: str, path: str, data: bytes) -> None:
        self.files[f"/{repo}/resolve/{revision}/{path}"] = data


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            hub.requests.append(
                {"path": self.path, "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
            )
            data = hub.files.get(self.path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and hub.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            cut = hub.cut_after.pop(self.path, None)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # drop the connection mid-body
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield hub
    server.shutdown()
    server.server_close()


@dataclass
class TinyWeights:
    lock: WeightsLock
    lock_path: Path
    contents: dict[str, bytes]  # repo path -> bytes
    repo: str = "acme/tiny-model"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_weights(tmp_path: Path) -> TinyWeights:
    """A lock of two components in the original-layout shape: one checkpoint with a known hash and size, and a text
    encoder folder whose config's hash is "unknown" (as the real lock's T5 files are)."""
    rng = os.urandom
    contents = {
        "model.safetensors": rng(300_000),
        "text_encoder/model.safetensors": rng(120_000),
        "text_encoder/config.json": b'{"d_model": 32}',
    }
    lock = WeightsLock(
        components=(
            LockedComponent(
                name="checkpoint",
                repo="acme/tiny-model",
                revision=REVISION,
                files=(
                    LockedFile(
                        path="model.safetensors",
                        dest="ltxv-tiny.safetensors",
                        sha256=sha256(contents["model.safetensors"]),
                        size=len(contents["model.safetensors"]),
                        sha256_source="test",
                    ),
                ),
            ),
            LockedComponent(
                name="text_encoder",
                repo="acme/tiny-model",
                revision=REVISION,
                files=(
                    LockedFile(
                        path="text_encoder/model.safetensors",
                        dest="text_encoder/text_encoder/model.safetensors",
                        sha256=sha256(contents["text_encoder/model.safetensors"]),
                    ),
                    LockedFile(path="text_encoder/config.json", dest="text_encoder/text_encoder/config.json"),
                ),
            ),
        )
    )
    lock_path = tmp_path / "weights.lock"
    write_lock(lock, lock_path)
    return TinyWeights(lock=lock, lock_path=lock_path, contents=contents)


@pytest.fixture
def hub_with_tiny(fake_hub: FakeHub, tiny_weights: TinyWeights) -> FakeHub:
    for path, data in tiny_weights.contents.items():
        fake_hub.add(tiny_weights.repo, REVISION, path, data)
    return fake_hub
