"""Holes 5 and 6 end to end, on the tiny model behind a live server: degenerate images are a typed 422 (not a 500),
and an 8000x8000 photo is generated from without killing the worker (it OOM-killed it twice before)."""

from __future__ import annotations

import pytest

from tests.api.helpers import submit, wait_completed
from tests.clients.endpoints import TARGET_INPUT
from tests.security.conftest import data_uri, png_bytes

ENDPOINT = "fal-ai/ltx-video-13b-dev/image-to-video"


@pytest.mark.parametrize("size", [(1, 1), (1, 1000), (1000, 1)])
def test_degenerate_images_are_422_image_too_small(ltx_server, size):
    with ltx_server.client() as c:
        sub = submit(c, ENDPOINT, {**TARGET_INPUT, "image_url": data_uri(png_bytes(*size))})
        done = wait_completed(c, sub["status_url"], timeout=120)
        assert done["error_type"] == "validation_error", done
        r = c.get(sub["response_url"])
        assert r.status_code == 422 and r.headers["x-fal-retryable"] == "false"
        assert r.json()["detail"][0]["type"] == "image_too_small"


def test_port_out_of_range_is_422_at_submit(ltx_server):
    with ltx_server.client() as c:
        r = c.post(f"/queue/{ENDPOINT}", json={**TARGET_INPUT, "image_url": "http://example.com:99999/a.png"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_8000x8000_photo_generates_and_the_worker_survives(ltx_server):
    pids = ltx_server.worker_pids()
    with ltx_server.client() as c:
        big = data_uri(png_bytes(8000, 8000))
        sub = submit(c, ENDPOINT, {**TARGET_INPUT, "image_url": big})
        done = wait_completed(c, sub["status_url"], timeout=300)
        assert done["error"] is None, done
        assert c.get(sub["response_url"]).json()["video"]["content_type"] == "video/mp4"
    assert ltx_server.worker_pids() == pids  # the same worker: never killed, never restarted
