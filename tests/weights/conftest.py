"""Fixtures for the weights tests: a tiny lock with real files, and a local HTTP server with Range support."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from ltxserve.weights.lock import LockedComponent, LockedFile, WeightsLock, write_lock

REVISION = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """The Hub's routes huggingface_hub calls, on 127.0.0.1: the paths-info API and /resolve/ with HEAD and Range.

    Files added with `lfs=True` are described with an LFS sha256, as the Hub does for large files; others only with
    their git blob id. `cut_after` drops a transfer once after that many bytes; `requests` records every call.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)
    cut_after: dict[str, int] = field(default_factory=dict)  # url path -> bytes to send before dropping (once)
    honour_range: bool = True
    requests: list[dict] = field(default_factory=list)
    base_url: str = ""
    published_sha256: dict[str, str] = field(default_factory=dict)  # url path -> what the API claims, if not true
    gates: dict[str, threading.Event] = field(default_factory=dict)  # url path -> GET body waits for this event
    serving: dict[str, threading.Event] = field(default_factory=dict)  # url path -> set when a GET for it arrives
    heads: dict[str, str] = field(default_factory=dict)  # repo -> the commit its default branch is at (model_info)

    def add(self, repo: str, revision: str, path: str, data: bytes, lfs: bool = True) -> None:
        key = f"/{repo}/resolve/{revision}/{path}"
        self.files[key] = data
        if lfs:
            self.lfs.add(key)

    def describe(self, key: str, path: str) -> dict:
        data = self.files[key]
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
        if key in self.lfs:
            entry["lfs"] = {"oid": self.published_sha256.get(key, sha256(data)), "size": len(data), "pointerSize": 134}
        return entry


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _record(self, method: str) -> None:
            hub.requests.append({"method": method, "path": self.path, "range": self.headers.get("Range"),
                                 "auth": self.headers.get("Authorization")})

        def _empty(self, status: int, headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            self._record("POST")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            # /api/models/{owner}/{name}/paths-info/{revision}
            parts = urlsplit(self.path).path.split("/")
            if len(parts) != 7 or parts[1:3] != ["api", "models"] or parts[5] != "paths-info":
                return self._empty(404)
            repo, revision = f"{parts[3]}/{parts[4]}", unquote(parts[6])
            if not any(k.startswith(f"/{repo}/resolve/{revision}/") for k in hub.files):
                return self._empty(404, {"X-Error-Code": "RevisionNotFound"})
            paths = parse_qs(body).get("paths", [])
            out = [hub.describe(f"/{repo}/resolve/{revision}/{p}", p) for p in paths
                   if f"/{repo}/resolve/{revision}/{p}" in hub.files]
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _file_headers(self, key: str) -> dict:
            data = hub.files[key]
            revision = key.split("/resolve/", 1)[1].split("/", 1)[0]
            etag = sha256(data) if key in hub.lfs else git_blob_id(data)
            return {"X-Repo-Commit": revision, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}

        def do_HEAD(self) -> None:  # noqa: N802
            self._record("HEAD")
            key = unquote(urlsplit(self.path).path)
            if key not in hub.files:
                return self._empty(404, {"X-Error-Code": "EntryNotFound"})
            self.send_response(200)
            for k, v in self._file_headers(key).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(hub.files[key])))
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            self._record("GET")
            key = unquote(urlsplit(self.path).path)
            if key.startswith("/api/models/"):  # model_info: /api/models/{owner}/{name}
                repo = key.removeprefix("/api/models/")
                if repo not in hub.heads:
                    return self._empty(404, {"X-Error-Code": "RepoNotFound"})
                data = json.dumps({"id": repo, "sha": hub.heads[repo], "siblings": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            data = hub.files.get(key)
            if data is None:
                return self._empty(404, {"X-Error-Code": "EntryNotFound"})
            start = 0
            rng = self.headers.get("Range")
            if rng and hub.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    return self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            if key in hub.serving:
                hub.serving[key].set()
            if key in hub.gates:
                hub.gates[key].wait(60)
            body = data[start:]
            for k, v in self._file_headers(key).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = hub.cut_after.pop(key, None)
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
        fake_hub.add(tiny_weights.repo, REVISION, path, data, lfs=path.endswith(".safetensors"))
    return fake_hub
