"""The real endpoint through the queue on the tiny model: logs, progress, output, and refusals."""

from __future__ import annotations

import pytest

from tests.api.helpers import png_data_uri, submit, wait_completed
from tests.clients.endpoints import TARGET_INPUT

ENDPOINT = "fal-ai/ltx-video-13b-dev/image-to-video"


def test_generation_logs_progress_and_tiny_warning(ltx_server):
    with ltx_server.client() as c:
        sub = submit(c, ENDPOINT, {**TARGET_INPUT, "reverse_video": True})
        done = wait_completed(c, sub["status_url"], timeout=120)
        assert done["error"] is None, done
        messages = [line["message"] for line in done["logs"]]
        assert any("TINY random-weight model" in m for m in messages)
        assert "pass 1 step 5/5" in messages and "pass 2 step 3/3" in messages
        out = c.get(sub["response_url"]).json()
        assert out["seed"] == TARGET_INPUT["seed"] and out["video"]["content_type"] == "video/mp4"


def test_random_seed_is_returned(ltx_server):
    with ltx_server.client() as c:
        body = {k: v for k, v in TARGET_INPUT.items() if k != "seed"}
        r = c.post(f"/run/{ENDPOINT}", json=body)
        assert r.status_code == 200 and isinstance(r.json()["seed"], int)


@pytest.mark.parametrize("extra, field", [
    ({"loras": [{"path": "https://example.com/x.safetensors"}]}, "loras"),
    ({"image_url": "data:image/png;base64,bm90IGFuIGltYWdl"}, "image_url"),
])
def test_unsupported_or_unusable_input_fails_clearly(ltx_server, extra, field):
    with ltx_server.client() as c:
        r = c.post(f"/run/{ENDPOINT}", json={**TARGET_INPUT, **extra})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", field]


def test_schema_errors_are_422_at_submit(ltx_server):
    with ltx_server.client() as c:
        r = c.post(f"/queue/{ENDPOINT}", json={"image_url": png_data_uri()})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "prompt"]
        r = c.post(f"/queue/{ENDPOINT}", json={**TARGET_INPUT, "first_pass_skip_final_steps": 6})
        assert r.status_code == 422 and "first_pass_skip_final_steps" in r.json()["detail"][0]["msg"]
