"""Holes 3 and 4: authentication before the body is read, uploads need a key when keys are configured, and stored
files are served with nosniff, non-media as attachments."""

from __future__ import annotations

import socket
import time

import pytest

KEY = "sekrit"
AUTH = {"Authorization": f"Key {KEY}"}


@pytest.fixture
def keyed(api_server_factory):
    return api_server_factory(api_keys=[KEY])


def _early_answer(port: int, path: str, declared: int) -> tuple[bytes, float]:
    """Send only the headers of a huge POST; return what the server says before any body byte and how fast."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {declared}\r\n\r\n").encode())
        started = time.monotonic()
        s.settimeout(5)
        try:
            data = s.recv(4096)
        except socket.timeout:
            data = b""
        return data, time.monotonic() - started


@pytest.mark.parametrize("path", ["/queue/fal-ai/ltx-video-13b-dev/image-to-video", "/files/upload",
                                  "/run/test/steps", "/storage/upload/initiate"])
def test_no_key_is_401_before_the_body_is_read(keyed, path):
    data, seconds = _early_answer(keyed.port, path, 60 * 1024 * 1024 - 1)
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert seconds < 2


def test_upload_needs_a_key_and_stores_nothing_without_one(keyed):
    with keyed.client() as c:
        r = c.post("/files/upload", content=b"<html>x</html>", headers={"Content-Type": "text/html"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Key"
        assert list(keyed.settings.files_dir.iterdir()) == []
        r = c.post("/storage/upload/initiate", json={"content_type": "image/png"})
        assert r.status_code == 401
        r = c.post("/files/upload", content=b"abc", headers={**AUTH, "Content-Type": "image/png"})
        assert r.status_code == 200


def test_proxy_route_is_authenticated_on_the_rewritten_path(keyed):
    with keyed.client() as c:
        h = {"x-fal-target-url": "https://queue.fal.run/test/steps"}
        assert c.post("/api/fal/proxy", json={"steps": 1}, headers=h).status_code == 401
        assert c.post("/api/fal/proxy", json={"steps": 1}, headers={**h, **AUTH}).status_code == 200


def test_open_routes_stay_open(keyed):
    with keyed.client() as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/.well-known/jwks.json").status_code == 200
        assert c.options("/queue/test/steps", headers={"Origin": "http://x", "Access-Control-Request-Method": "POST"}
                         ).status_code == 200


@pytest.mark.parametrize("content_type, inline", [
    ("text/html", False), ("image/svg+xml", False), ("application/javascript", False), ("image/png", True),
    ("video/mp4", True),
])
def test_files_served_with_nosniff_and_non_media_as_attachment(keyed, content_type, inline):
    with keyed.client() as c:
        r = c.post("/files/upload", content=b"<script>alert(1)</script>",
                   headers={**AUTH, "Content-Type": content_type, "X-Fal-File-Name": "page.html"})
        url = r.json()["access_url"]
        got = c.get(url)
        assert got.status_code == 200
        assert got.headers["x-content-type-options"] == "nosniff"
        disposition = got.headers["content-disposition"]
        assert disposition.startswith("inline" if inline else "attachment"), disposition
        if not inline:
            assert got.headers["content-type"].split(";")[0] == "application/octet-stream"


def test_file_urls_that_are_not_stored_files_are_404(keyed):
    with keyed.client() as c:
        for path in ("/files/x/%2Fetc%2Fpasswd", "/files/..%2F..%2Fjobs.sqlite3", "/files/x/..%2F..%2Fjobs.sqlite3",
                     "/files/" + "0" * 32 + "/a.png"):
            r = c.get(path)
            assert r.status_code == 404, path
