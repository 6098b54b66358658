"""Fetching and preparing the input image, and writing the mp4."""

from __future__ import annotations

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ltxserve.config import Settings
from ltxserve.engine.contract import InputError
from ltxserve.engine.media import fetch_image, gaussian_blur, prepare_conditioning_image, write_mp4


def _png(w=20, h=10) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(w * h * 3) % 251).astype(np.uint8).reshape(h, w, 3)).save(buf, format="PNG")
    return buf.getvalue()


class _Server(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.end_headers()
            return
        body = _png() if self.path == "/img.png" else b"x" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def http_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_data_uri_and_http_fetch(http_url):
    allow = Settings(fetch_allow_private_networks=True)
    assert fetch_image("data:image/png;base64," + base64.b64encode(_png()).decode(), allow).size == (20, 10)
    assert fetch_image(http_url + "/img.png", allow).size == (20, 10)
    assert fetch_image(http_url + "/redirect", allow).size == (20, 10)


def test_private_addresses_refused_by_default(http_url):
    with pytest.raises(InputError, match="non-public address") as exc:
        fetch_image(http_url + "/img.png", Settings())
    assert exc.value.loc == ["body", "image_url"]


def test_limits_and_bad_images(http_url):
    small = Settings(fetch_allow_private_networks=True, fetch_max_bytes=1000)
    with pytest.raises(InputError, match="larger than 1000"):
        fetch_image(http_url + "/big", small)
    with pytest.raises(InputError, match="not a readable image"):
        fetch_image("data:text/plain,hello", Settings())
    with pytest.raises(InputError, match="HTTP 404|not a readable"):
        fetch_image(http_url + "/missing-is-not-an-image", Settings(fetch_allow_private_networks=True))


def test_blur_matches_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 7, 9, generator=g)
    k = np.exp(-0.5 * np.array([-1.0, 0.0, 1.0]) ** 2)
    k = k / k.sum()
    padded = np.pad(img.numpy(), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    expected = np.zeros_like(img.numpy())
    for dy in range(3):
        for dx in range(3):
            expected += k[dy] * k[dx] * padded[:, dy:dy + 7, dx:dx + 9]
    np.testing.assert_allclose(gaussian_blur(img).numpy(), expected, atol=1e-6)


def test_conditioning_crops_to_aspect_and_pads():
    image = Image.fromarray(np.full((90, 200, 3), 128, np.uint8))
    t = prepare_conditioning_image(image, 96, 64, (0, 0, 0, 0), crf=0)
    assert t.shape == (1, 3, 1, 90, 135) and -1 <= t.min() and t.max() <= 1  # cropped 200x90 -> 135x90 (3:2)
    t = prepare_conditioning_image(image, 100, 70, (2, 2, 1, 1), crf=35)
    assert t.shape[-2:] == (90 + 2, 128 + 4)  # CRF crops to even sides, then the output's padding
    assert torch.all(t[..., :1, :] == 0) and torch.all(t[..., :, :2] == 0)


def test_write_mp4_streams_h264(tmp_path):
    frames = (np.random.default_rng(0).integers(0, 255, (5, 33, 47, 3))).astype(np.uint8)
    write_mp4(iter(frames), tmp_path / "o.mp4", fps=12)
    with av.open(str(tmp_path / "o.mp4")) as c:
        s = c.streams.video[0]
        decoded = list(c.decode(s))
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert len(decoded) == 5 and s.average_rate == 12
        assert (s.width, s.height) == (48, 34)  # odd sides padded by one pixel for yuv420p
