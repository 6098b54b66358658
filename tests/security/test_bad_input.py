"""Holes 5 and 7: every malformed input is a 422/400/413 in fal's shape, no 500, the connection stays usable, and
error bodies repeat at most a short prefix of the input. Strict models: no unknown keys (loras items included), no
true-as-integer, no blank prompt."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.security.conftest import data_uri, png_bytes

LTX = "/queue/fal-ai/ltx-video-13b-dev/image-to-video"
IMAGE = data_uri(png_bytes(32, 32))
VALID = {"prompt": "a cat", "image_url": IMAGE}


def _raw(body: str) -> bytes:
    return body.encode("utf-8", "surrogatepass")


# Bodies as raw text: Python's json module would refuse to write some of them.
RAW_BODIES = {
    "nan_seed": '{"prompt": "a", "image_url": "%s", "seed": NaN}' % IMAGE,
    "infinity_frames": '{"prompt": "a", "image_url": "%s", "num_frames": Infinity}' % IMAGE,
    "1e999_frame_rate": '{"prompt": "a", "image_url": "%s", "frame_rate": 1e999}' % IMAGE,
    "nan_lora_scale": '{"prompt": "a", "image_url": "%s", "loras": [{"path": "a/b", "scale": NaN}]}' % IMAGE,
    "lone_surrogate_prompt": '{"prompt": "\\ud800", "image_url": "%s"}' % IMAGE,
    "lone_surrogate_key": '{"prompt": "a", "image_url": "%s", "\\udc00": 1}' % IMAGE,
    "not_json": '{"prompt": ',
    "array": '[1, 2, 3]',
    "deep": "[" * 5000 + "]" * 5000,
}


def test_malformed_bodies_are_422_and_the_connection_stays_usable(api_server):
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=30)
    try:
        for name, body in RAW_BODIES.items():
            conn.request("POST", LTX, body=_raw(body), headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            payload = r.read()
            body = json.loads(payload)
            assert r.getheader("connection", "").lower() != "close", name
            if name == "deep":  # nesting too deep to parse at all: a request error, as fal answers one
                assert r.status == 400 and body["error_type"] == "bad_request", (name, payload[:300])
            else:
                assert r.status == 422, (name, r.status, payload[:300])
                assert isinstance(body["detail"], list) and body["detail"], name
                for item in body["detail"]:
                    assert {"loc", "msg", "type", "url"} <= set(item), (name, item)
            # the same connection answers the next request: it was not reset
            conn.request("GET", "/healthz")
            ok = conn.getresponse()
            assert ok.status == 200 and json.loads(ok.read()) == {"status": "ok"}, name
    finally:
        conn.close()


@pytest.mark.parametrize("header, value", [
    ("X-Fal-Object-Lifecycle-Preference", '{"expiration_duration_seconds": 1e999}'),
    ("X-Fal-Object-Lifecycle-Preference", '{"expiration_duration_seconds": NaN}'),
    ("X-Fal-Object-Lifecycle-Preference", '[1]'),
    ("X-Fal-Object-Lifecycle-Preference", '{"expiration_duration_seconds": true}'),
    ("X-Fal-Request-Timeout", "inf"),
    ("X-Fal-Request-Timeout", "nan"),
    ("X-Fal-Queue-Priority", "urgent"),
])
def test_bad_headers_are_422_not_500(api_server, header, value):
    with api_server.client() as c:
        r = c.post(LTX, json=VALID, headers={header: value})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["header", header.lower()]
        assert r.headers["x-fal-retryable"] == "false"
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("change, loc", [
    ({"loras": [{"path": "owner/name", "weight_name": "x.safetensors", "sclae": 2}]}, ["body", "loras", 0, "sclae"]),
    ({"seed": True}, ["body", "seed"]),
    ({"frame_rate": True}, ["body", "frame_rate"]),
    ({"num_frames": False}, ["body", "num_frames"]),
    ({"prompt": "   \n\t "}, ["body", "prompt"]),
    ({"prompt": ""}, ["body", "prompt"]),
    ({"image_url": "http://example.com:99999/a.png"}, ["body", "image_url"]),
    ({"image_url": "http:///a.png"}, ["body", "image_url"]),
    ({"image_url": "https://[::1/a.png"}, ["body", "image_url"]),
    ({"loras": [{"path": "https://example.com:70000/x.safetensors"}]}, ["body", "loras", 0, "path"]),
    ({"unknown_top_level": 1}, ["body", "unknown_top_level"]),
])
def test_strict_models(api_server, change, loc):
    with api_server.client() as c:
        r = c.post(LTX, json={**VALID, **change})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert any(item["loc"] == loc for item in detail), detail
        for item in detail:
            assert item["url"].startswith("https://docs.fal.ai/errors#")


def test_valid_input_is_still_accepted(api_server):
    with api_server.client() as c:
        r = c.post(LTX, json={**VALID, "seed": 7, "loras": [{"path": "owner/name", "weight_name": "x.safetensors",
                                                             "scale": 0.5}]})
        assert r.status_code == 200, r.text


def test_error_bodies_echo_only_a_short_prefix(api_server):
    huge = "x" * 1_000_000
    with api_server.client() as c:
        for body in ({**VALID, "prompt": huge}, {**VALID, "seed": huge}, {**VALID, huge: 1},
                     {**VALID, "loras": [{"path": huge}]}):
            r = c.post(LTX, json=body)
            assert r.status_code == 422
            assert len(r.content) < 2000, len(r.content)
        r = c.get("/queue/fal-ai/ltx-video-13b-dev/requests/" + "a" * 30_000 + "/status")
        assert r.status_code == 404 and len(r.content) < 1000


def test_fal_shape_of_a_model_error(api_server):
    with api_server.client() as c:
        r = c.post(LTX, json={**VALID, "num_frames": 5})
        assert r.status_code == 422
        (item,) = r.json()["detail"]
        assert item["loc"] == ["body", "num_frames"] and item["type"] == "greater_than_equal"
        assert item["url"] == "https://docs.fal.ai/errors#greater_than_equal"
        assert item["ctx"] == {"ge": 9} and item["input"] == 5
        r = c.post(LTX, json={**VALID, "resolution": "1080p"})
        assert r.json()["detail"][0]["type"] == "one_of"


@pytest.mark.parametrize("body", [
    '{"content_type": "\\ud800"}',  # found by the fuzz suite: stored, it broke the files index (500)
    '{"content_type": "image/png", "file_name": "a\\udc00.png"}',
    '{"content_type": "not a mime type"}',
    '{"content_type": "image/png\\r\\nX-Injected: 1"}',
])
def test_upload_initiate_refuses_unusable_types_and_names_with_422(api_server, body):
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=30)
    try:
        conn.request("POST", "/storage/upload/initiate", body=_raw(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        payload = json.loads(r.read())
        assert r.status == 422 and payload["detail"][0]["loc"][0] == "body", payload
        conn.request("POST", "/storage/upload/initiate", body=b'{"content_type": "image/png", "file_name": "a.png"}',
                     headers={"Content-Type": "application/json"})
        ok = conn.getresponse()
        assert ok.status == 200 and "upload_url" in json.loads(ok.read())
    finally:
        conn.close()
