"""expand_prompt through the HTTP queue on the tiny model (captioner + LLM with random weights), and its refusal
when the enhancer's weights are missing."""

from __future__ import annotations

import pytest

from tests.api.helpers import submit, wait_completed
from tests.clients.endpoints import TARGET_INPUT

ENDPOINT = "fal-ai/ltx-video-13b-dev/image-to-video"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.fixtures_server import LTX_ENDPOINT_SPEC, LiveServer, free_port

    from ltxserve.tls import init_tls

    root = tmp_path_factory.mktemp("expand")
    init_tls(root / "tls")  # the official fal-client trusts the server through SSL_CERT_FILE
    s = LiveServer(data_dir=root / "data", port=free_port(), endpoints=[LTX_ENDPOINT_SPEC],
                   extra_args=["--model", "tiny"],
                   env={"LTXSERVE_PROMPT_ENHANCER_CAPTION_TOKENS": "8", "LTXSERVE_PROMPT_ENHANCER_MAX_TOKENS": "16"},
                   tls_dir=root / "tls")
    s.start()
    yield s
    s.stop()


def _run(server, body: dict) -> tuple[dict, list[str]]:
    with server.client() as c:
        sub = submit(c, ENDPOINT, body)
        done = wait_completed(c, sub["status_url"], timeout=180)
        assert done["error"] is None, done
        return c.get(sub["response_url"]).json(), [line["message"] for line in done["logs"]]


@pytest.mark.slow  # three tiny generations (~20 s on a loaded 2-core machine)
def test_expanded_prompt_is_used_returned_logged_and_deterministic(server):
    body = {**TARGET_INPUT, "expand_prompt": True}
    first, logs = _run(server, body)
    assert first["prompt"] and first["prompt"] != TARGET_INPUT["prompt"]
    assert any(m.startswith("prompt enhancer: image caption: ") for m in logs)
    assert f"prompt enhancer: expanded prompt: {first['prompt']}" in logs
    second, _ = _run(server, body)
    assert second["prompt"] == first["prompt"]  # the same request, the same expansion
    plain, _ = _run(server, {**TARGET_INPUT, "expand_prompt": False})
    with server.client() as c:
        videos = [c.get(out["video"]["url"]).content for out in (first, second, plain)]
    assert videos[0] == videos[1]  # the same expansion, seed and image: the same video
    assert videos[0] != videos[2]  # generated from the expanded prompt, not the user's


def test_the_official_fal_client_gets_the_expanded_prompt_and_its_logs(server):
    from tests.clients.conftest_helpers import run_py

    out = run_py("subscribe", server, ENDPOINT, {**TARGET_INPUT, "expand_prompt": True})
    result = out["result"]
    assert result["prompt"] and result["prompt"] != TARGET_INPUT["prompt"]
    logs = [line["message"] for line in out["updates"][-1]["logs"]]
    assert f"prompt enhancer: expanded prompt: {result['prompt']}" in logs


def test_without_expand_prompt_the_prompt_is_returned_as_given(server):
    out, logs = _run(server, {**TARGET_INPUT, "expand_prompt": False})
    assert out["prompt"] == TARGET_INPUT["prompt"]
    assert not any(m.startswith("prompt enhancer") for m in logs)


def test_missing_enhancer_weights_are_a_422_on_expand_prompt(tiny_original_checkpoint, tmp_path):
    """A real checkpoint folder (not --model tiny) with no enhancer weights: a fal-format 422 naming the command."""
    from ltxserve.config import Settings
    from ltxserve.engine.contract import InputError
    from ltxserve.engine.endpoint import ImageToVideoEndpoint
    from ltxserve.engine.schema import ImageToVideoInput

    settings = Settings(model=str(tiny_original_checkpoint), device="cpu", weights_dir=tmp_path / "weights",
                        data_dir=tmp_path / "data", safety_checker="off")  # the checker is not under test
    endpoint = ImageToVideoEndpoint(settings)
    with pytest.raises(InputError) as caught:
        endpoint.generate(ImageToVideoInput(**{**TARGET_INPUT, "expand_prompt": True}))
    body = caught.value.body()
    assert caught.value.status_code == 422
    assert body["detail"][0]["loc"] == ["body", "expand_prompt"]
    assert body["detail"][0]["type"] == "prompt_enhancer_unavailable"
    assert "ltxserve weights pull --component prompt_captioner --component prompt_llm" in body["detail"][0]["msg"]
