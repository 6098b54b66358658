"""LoRAs end to end through the queue: a good LoRA changes the video, a bad one fails clearly, the worker goes on."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from safetensors.torch import save_file

from ltxserve.engine.models import build_tiny_components
from tests.api.helpers import submit, wait_completed
from tests.clients.endpoints import TARGET_INPUT
from tests.engine.test_lora import _Files, _factors, _layout

ENDPOINT = "fal-ai/ltx-video-13b-dev/image-to-video"


@pytest.fixture(scope="module")
def server_and_files(tmp_path_factory):
    import threading
    from http.server import ThreadingHTTPServer

    from tests.fixtures_server import LiveServer, free_port

    root = tmp_path_factory.mktemp("lora")
    tr = build_tiny_components().transformer
    local = root / "loras"
    local.mkdir()
    save_file(_layout(_factors(tr, seed=9), "original_updown", 2.0), local / "local.safetensors")
    from safetensors.torch import save

    _Files.files = {"/good.safetensors": save(_layout(_factors(tr, seed=4), "peft", None)),
                    "/wrong.safetensors": save({"transformer.nowhere.lora_A.weight": _factors(tr)["proj_in"][0],
                                                "transformer.nowhere.lora_B.weight": _factors(tr)["proj_in"][1]})}
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    s = LiveServer(data_dir=root / "data", port=free_port(), endpoints=["ltxserve.engine.schema:SPEC"],
                   extra_args=["--model", "tiny"],
                   env={"LTXSERVE_FETCH_ALLOW_PRIVATE_NETWORKS": "true", "LTXSERVE_LORA_DIRS": f'["{local}"]'})
    s.start()
    yield s, f"http://127.0.0.1:{http.server_address[1]}", local
    s.stop()
    http.shutdown()


def _frames(c, out) -> np.ndarray:
    data = c.get(out["video"]["url"]).content
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_loras_apply_fail_clearly_and_leave_the_base_model_intact(server_and_files):
    server, files, local = server_and_files
    with server.client() as c:
        def run(loras):
            sub = submit(c, ENDPOINT, {**TARGET_INPUT, "loras": loras})
            done = wait_completed(c, sub["status_url"], timeout=120)
            return done, c.get(sub["response_url"])

        done, base = run([])
        assert done["error"] is None
        base_frames = _frames(c, base.json())
        done, styled = run([{"path": f"{files}/good.safetensors", "scale": 1.5},
                            {"path": str(local / "local.safetensors"), "scale": 0.5}])
        assert done["error"] is None and any("LoRA 1" in line["message"] for line in done["logs"])
        assert not np.array_equal(_frames(c, styled.json()), base_frames)
        for bad, fragment in (({"path": f"{files}/wrong.safetensors"}, "nowhere"),
                              ({"path": f"{files}/missing.safetensors"}, "HTTP 404"),
                              ({"path": "/etc/passwd"}, "allowed LoRA folder")):
            done, result = run([bad])
            assert done["error_type"] == "validation_error"
            assert result.status_code == 422 and fragment in result.json()["detail"][0]["msg"]
        done, again = run([])  # the worker is healthy and the base model unchanged
        assert np.array_equal(_frames(c, again.json()), base_frames)
