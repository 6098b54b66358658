"""The queue protocol against a live `ltxserve serve` with test endpoints (real worker processes, real store)."""

from __future__ import annotations

import io
import json
import uuid

import httpx
from PIL import Image

from tests.api.helpers import png_data_uri, submit, wait_completed, wait_state


def test_submit_status_result_roundtrip(shared_server):
    with shared_server.client() as c:
        sub = submit(c, "test/echo-image", {"image_url": png_data_uri(8, 6, (10, 200, 30)), "text": "ab", "repeat": 2})
        assert sub["status"] == "IN_QUEUE" and isinstance(sub["queue_position"], int)
        for key in ("request_id", "response_url", "status_url", "cancel_url"):
            assert sub[key]
        # owner/app only in the URLs, as the clients build them
        assert f"/queue/test/echo-image/requests/{sub['request_id']}" in sub["response_url"]
        done = wait_completed(c, sub["status_url"])
        assert done["error"] is None and "logs" in done and done["metrics"]["inference_time"] > 0
        assert any("image 8x6" in line["message"] for line in done["logs"])
        r = c.get(sub["response_url"])
        assert r.status_code == 200 and r.headers["x-fal-request-id"] == sub["request_id"]
        out = r.json()
        assert out["text"] == "abab" and (out["width"], out["height"]) == (8, 6)
        image = c.get(out["image"]["url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        pixel = Image.open(io.BytesIO(image.content)).getpixel((0, 0))
        assert pixel == (245, 55, 225)  # inverted (10, 200, 30)
        assert out["image"]["file_size"] == len(image.content)


def test_status_codes_and_logs_flag_variants(shared_server):
    with shared_server.client() as c:
        sub = submit(c, "test/steps", {"steps": 6, "seconds_per_step": 0.1})
        running = wait_state(c, sub["status_url"], "IN_PROGRESS")
        assert "logs" in running and running["logs"] is None  # key present, null without logs
        for flag in ("1", "true"):
            r = c.get(sub["status_url"], params={"logs": flag})
            assert r.status_code in (200, 202)
            assert isinstance(r.json()["logs"], list)
        for flag in ("0", "false"):
            assert c.get(sub["status_url"], params={"logs": flag}).json()["logs"] is None
        assert c.get(sub["status_url"]).status_code == 202
        done = wait_completed(c, sub["status_url"])
        assert [l["message"] for l in done["logs"]][-1] == "job step 6/6"
        # trailing slash, as fal's own SDK asks
        assert c.get(sub["status_url"] + "/").status_code == 200


def test_result_before_completion_is_an_error(shared_server):
    with shared_server.client() as c:
        sub = submit(c, "test/steps", {"steps": 20, "seconds_per_step": 0.05})
        r = c.get(sub["response_url"])
        assert r.status_code == 400 and r.json() == {"detail": "Request is still in progress"}
        wait_completed(c, sub["status_url"])


def test_priority_low_runs_after_normal(shared_server):
    with shared_server.client() as c:
        blocker = submit(c, "test/steps", {"steps": 10, "seconds_per_step": 0.05, "label": "blocker"})
        wait_state(c, blocker["status_url"], "IN_PROGRESS")
        low = submit(c, "test/steps", {"steps": 1, "label": "low"}, headers={"X-Fal-Queue-Priority": "low"})
        normal1 = submit(c, "test/steps", {"steps": 1, "label": "n1"})
        normal2 = submit(c, "test/steps", {"steps": 1, "label": "n2"})
        positions = {k: c.get(v["status_url"]).json().get("queue_position")
                     for k, v in (("low", low), ("n1", normal1), ("n2", normal2))}
        assert positions == {"n1": 0, "n2": 1, "low": 2}
        for s in (low, normal1, normal2):
            wait_completed(c, s["status_url"])


def test_start_timeout_completes_with_request_timeout(shared_server):
    with shared_server.client() as c:
        blocker = submit(c, "test/steps", {"steps": 80, "seconds_per_step": 0.05})
        wait_state(c, blocker["status_url"], "IN_PROGRESS")
        late = submit(c, "test/steps", {"steps": 1}, headers={"X-Fal-Request-Timeout": "1.5"})
        done = wait_completed(c, late["status_url"], timeout=30)
        assert done["error_type"] == "request_timeout"
        r = c.get(late["response_url"])
        assert r.status_code == 504 and r.json()["error_type"] == "request_timeout"
        wait_completed(c, blocker["status_url"])


def test_cancel_queued_and_running(shared_server):
    with shared_server.client() as c:
        running = submit(c, "test/steps", {"steps": 200, "seconds_per_step": 0.05})
        wait_state(c, running["status_url"], "IN_PROGRESS")
        queued = submit(c, "test/steps", {"steps": 1})
        r = c.put(queued["cancel_url"])
        assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
        assert c.get(queued["status_url"]).json()["status"] == "COMPLETED"  # removed at once
        r = c.put(running["cancel_url"])
        assert r.status_code == 202
        done = wait_completed(c, running["status_url"], timeout=20)
        assert done["error_type"] == "request_cancelled"
        steps_done = [l for l in done["logs"] if "step" in l["message"]]
        assert len(steps_done) < 200
        assert c.put(running["cancel_url"]).status_code == 400  # ALREADY_COMPLETED
        assert c.get(running["response_url"]).status_code == 400


def test_failures_complete_with_error(shared_server):
    with shared_server.client() as c:
        for kind, code, error_type in (("endpoint", 500, "generation_error"), ("input", 422, "validation_error"),
                                       ("bug", 500, "internal_error")):
            sub = submit(c, "test/fail", {"kind": kind})
            done = wait_completed(c, sub["status_url"])
            assert done["error_type"] == error_type and done["error"]
            r = c.get(sub["response_url"])
            assert r.status_code == code and r.headers["content-type"].startswith("application/json")
            assert "Traceback" not in r.text
            if kind == "input":
                assert r.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_bad_input_is_422_in_fal_format(shared_server):
    with shared_server.client() as c:
        cases = [
            (b'{"text": "x", "image_url":', "json_invalid"),              # malformed JSON
            (json.dumps({"text": "x"}).encode(), "missing"),             # missing image_url
            (json.dumps({"image_url": "data:,", "text": "x", "repeat": "many"}).encode(), "int_parsing"),
            (json.dumps({"image_url": "data:,", "text": "x", "repeat": 99}).encode(), "less_than_equal"),
        ]
        for body, kind in cases:
            r = c.post("/queue/test/echo-image", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert isinstance(detail, list) and detail[0]["type"] == kind
            assert detail[0]["loc"][0] == "body"
            assert r.headers.get("x-fal-request-id")


def test_unknown_app_and_request_ids_are_404(shared_server):
    with shared_server.client() as c:
        assert c.post("/queue/test/nope", json={}).status_code == 404
        assert c.post("/queue/test/echo-image/extra/path", json={}).status_code == 404
        rid = str(uuid.uuid4())
        for url in (f"/queue/test/steps/requests/{rid}/status", f"/queue/test/steps/requests/{rid}",
                    "/queue/test/steps/requests/not-a-uuid/status", f"/queue/nobody/app/requests/{rid}/status"):
            r = c.get(url)
            assert r.status_code == 404 and "detail" in r.json(), url
        assert c.put(f"/queue/test/steps/requests/{rid}/cancel").status_code == 404
        # a real id under another app is not found either
        sub = submit(c, "test/steps", {"steps": 1})
        assert c.get(f"/queue/test/echo-image/requests/{sub['request_id']}/status").status_code == 404


def test_oversized_body_rejected_before_read(live_server_factory):
    server = live_server_factory(env={"LTXSERVE_MAX_BODY_BYTES": "2000"})
    with server.client() as c:
        r = c.post("/queue/test/echo-image", json={"image_url": "data:," + "a" * 5000, "text": "x"})
        assert r.status_code == 413 and "too large" in r.json()["detail"]

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(10):
                yield b"x" * 1000

        r = c.post("/queue/test/echo-image", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_sync_run(shared_server):
    with shared_server.client() as c:
        r = c.post("/run/test/echo-image", json={"image_url": png_data_uri(), "text": "hi"})
        assert r.status_code == 200 and r.json()["text"] == "hi"
        assert r.headers["x-fal-request-id"]
        r = c.post("/run/test/fail", json={"kind": "input"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_status_stream(shared_server):
    with shared_server.client() as c:
        sub = submit(c, "test/steps", {"steps": 5, "seconds_per_step": 0.1})
        events = []
        with c.stream("GET", sub["status_url"] + "/stream", params={"logs": "1"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["status"] == "COMPLETED"
        assert {e["status"] for e in events} >= {"IN_PROGRESS", "COMPLETED"}
        assert len(events[-1]["logs"]) == 5


def test_storage_upload_and_range(shared_server):
    with shared_server.client() as c:
        r = c.post("/storage/upload/initiate?storage_type=fal-cdn-v3",
                   json={"content_type": "video/mp4", "file_name": "clip.mp4"})
        assert r.status_code == 200
        urls = r.json()
        payload = bytes(range(256)) * 40
        assert c.put(urls["upload_url"], content=payload, headers={"content-type": "video/mp4"}).status_code == 200
        assert c.put(urls["upload_url"], content=b"again").status_code == 404  # write once
        full = c.get(urls["file_url"])
        assert full.content == payload and full.headers["accept-ranges"] == "bytes"
        part = c.get(urls["file_url"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == payload[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(payload)}"
        # an uploaded image works as image_url
        up = c.post("/storage/upload/initiate", json={"content_type": "image/png", "file_name": "in.png"}).json()
        buf = io.BytesIO()
        Image.new("RGB", (4, 3), (0, 0, 0)).save(buf, format="PNG")
        c.put(up["upload_url"], content=buf.getvalue(), headers={"content-type": "image/png"})
        r = c.post("/run/test/echo-image", json={"image_url": up["file_url"], "text": "u"})
        assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (4, 3)


def test_proxy_contract(shared_server):
    with shared_server.client() as c:
        h = {"x-fal-target-url": "https://queue.fal.run/test/steps?fal_webhook=", "content-type": "application/json"}
        sub = c.post("/api/fal/proxy", json={"steps": 1}, headers=h)
        assert sub.status_code == 200, sub.text
        rid = sub.json()["request_id"]
        status_target = f"https://queue.fal.run/test/steps/requests/{rid}/status?logs=1"
        for _ in range(200):
            st = c.get("/api/fal/proxy", headers={"x-fal-target-url": status_target})
            if st.json()["status"] == "COMPLETED":
                break
        assert st.json()["status"] == "COMPLETED" and st.headers["x-fal-request-id"] == rid
        res = c.get("/api/fal/proxy", headers={"x-fal-target-url": f"https://queue.fal.run/test/steps/requests/{rid}"})
        assert res.json()["steps_done"] == 1
        run = c.post("/api/fal/proxy", json={"steps": 1},
                     headers={"x-fal-target-url": "https://fal.run/test/steps", "content-type": "application/json"})
        assert run.status_code == 200 and run.json()["steps_done"] == 1
        init = c.post("/api/fal/proxy", json={"content_type": "text/plain", "file_name": "a.txt"},
                      headers={"x-fal-target-url": "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
                               "content-type": "application/json"})
        assert set(init.json()) == {"upload_url", "file_url"}
        assert c.get("/api/fal/proxy").status_code == 400
        bad = c.get("/api/fal/proxy", headers={"x-fal-target-url": "https://evil.example.com/x"})
        assert bad.status_code == 400
        pre = c.options("/api/fal/proxy", headers={"Origin": "http://app.example", "Access-Control-Request-Method":
                                                   "POST", "Access-Control-Request-Headers": "x-fal-target-url"})
        assert pre.status_code == 200 and "x-fal-target-url" in pre.headers["access-control-allow-headers"].lower()


def test_health_metrics_openapi_jwks(shared_server):
    with shared_server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        metrics = c.get("/metrics").text
        assert "ltxserve_queue_depth" in metrics and 'ltxserve_jobs{state="COMPLETED_OK"}' in metrics
        assert "ltxserve_generation_seconds_bucket" in metrics
        spec = c.get("/openapi.json").json()
        assert "/queue/test/echo-image" in spec["paths"] and "/run/test/echo-image" in spec["paths"]
        schemas = spec["components"]["schemas"]
        assert "EchoInput" in schemas and "SubmitResponse" in schemas
        keys = c.get("/.well-known/jwks.json").json()["keys"]
        assert keys[0]["kty"] == "OKP" and keys[0]["crv"] == "Ed25519"


def test_auth_required_when_keys_configured(live_server_factory):
    server = live_server_factory(extra_args=["--api-key", "secret1", "--api-key", "secret2"])
    with server.client() as c:
        r = c.post("/queue/test/steps", json={"steps": 1})
        assert r.status_code == 401 and "detail" in r.json()
        assert c.post("/queue/test/steps", json={"steps": 1}, headers={"Authorization": "Key wrong"}).status_code == 401
        ok = c.post("/queue/test/steps", json={"steps": 1}, headers={"Authorization": "Key secret2"})
        assert ok.status_code == 200
        assert c.get(ok.json()["status_url"], headers={"Authorization": "Bearer secret1"}).status_code in (200, 202)
        assert c.get("/healthz").status_code == 200  # health stays open


def test_refuses_public_bind_without_key(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ltxserve.cli", "serve", "--host", "0.0.0.0", "--port", "1",
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "without an API key" in r.stderr


def test_tls_serving(tls_live_server):
    with tls_live_server.client() as c:
        assert c.get("/healthz").status_code == 200
    with httpx.Client(verify=True) as untrusted:  # the default bundle does not know our CA
        try:
            untrusted.get(tls_live_server.base_url + "/healthz")
            raise AssertionError("TLS verification should fail without the local CA")
        except httpx.ConnectError:
            pass
