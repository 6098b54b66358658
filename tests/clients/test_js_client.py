"""The unmodified `@fal-ai/client` (npm) against a live ltxserve, through its `proxyUrl` option."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.clients.conftest_helpers import run_js
from tests.clients.endpoints import FAIL, STEPS, TARGET, TARGET_INPUT, check_target_output


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.fixtures_server import LiveServer, free_port

    s = LiveServer(data_dir=tmp_path_factory.mktemp("jsclient") / "data", port=free_port(),
                   endpoints=TARGET.server_endpoints, extra_args=TARGET.server_args)
    s.start()
    yield s
    s.stop()


def test_subscribe_polling_with_logs(server):
    out = run_js("subscribe_polling", server.base_url, TARGET.endpoint_id, TARGET_INPUT)
    assert out["enqueued"] and out["requestId"] == out["enqueued"]  # from x-fal-request-id
    statuses = [u["status"] for u in out["updates"]]
    assert statuses and set(statuses) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert any(u["logs"] for u in out["updates"])
    check_target_output(out["data"], server)


def test_subscribe_streaming(server):
    out = run_js("subscribe_streaming", server.base_url, TARGET.endpoint_id, TARGET_INPUT)
    assert out["updates"][-1]["status"] == "COMPLETED"
    check_target_output(out["data"], server)


def test_stream_status_events(server):
    out = run_js("stream_status", server.base_url, STEPS.endpoint_id, {"steps": 5, "seconds_per_step": 0.1})
    assert out["last"] == "COMPLETED" and out["events"][-1] == "COMPLETED"
    assert "IN_PROGRESS" in out["events"]


def test_submit_status_result(server):
    out = run_js("submit_status_result", server.base_url, TARGET.endpoint_id, TARGET_INPUT)
    assert out["first"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED") and out["final"] == "COMPLETED"
    assert out["result"]["requestId"] == out["request_id"]
    check_target_output(out["result"]["data"], server)


def test_cancel_queued_and_running(server):
    out = run_js("cancel_queued_and_running", server.base_url, STEPS.endpoint_id,
                 {"steps": 400, "seconds_per_step": 0.05})
    for name in ("queued", "running"):
        assert out[name]["status"] == "COMPLETED"
        assert out[name]["error"]["status"] == 400
        assert out[name]["error"]["body"]["error_type"] == "request_cancelled"


def test_sync_run(server):
    out = run_js("run", server.base_url, TARGET.endpoint_id, TARGET_INPUT)
    assert out["requestId"]
    check_target_output(out["data"], server)


def test_storage_upload_of_a_blob_used_as_image_url(server):
    buf = io.BytesIO()
    Image.new("RGB", (60, 40), (1, 2, 3)).save(buf, format="PNG")
    out = run_js("upload_and_use", server.base_url, TARGET.endpoint_id, TARGET_INPUT,
                 extra_env={"FAL_BLOB_PNG_B64": base64.b64encode(buf.getvalue()).decode()})
    check_target_output(out["data"], server)


def test_validation_error_is_a_validation_error(server):
    out = run_js("validation_error", server.base_url, FAIL.endpoint_id, {"kind": "nonsense"})
    assert out["raised"] and out["status"] == 422 and out["name"] == "ValidationError"
    assert out["body"]["detail"][0]["loc"] == ["body", "kind"]
