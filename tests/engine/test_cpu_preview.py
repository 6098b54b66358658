"""The tiny model on a CPU runs big requests at a smaller size and resizes the frames; small requests (every other
test's) and real weights run exactly as asked."""

from __future__ import annotations

import numpy as np
import pytest

from ltxserve.engine import cpu_preview
from ltxserve.engine.cpu_preview import TINY_CPU_TOKEN_BUDGET, resize_frames, second_pass_tokens, tiny_cpu_size
from ltxserve.engine.plan import LTXV_13B_097_DEV

DOWNSCALE = LTXV_13B_097_DEV.downscale_factor


def test_the_default_request_is_scaled_into_the_budget_with_its_aspect():
    assert second_pass_tokens(1280, 720, 121, DOWNSCALE) == 24_960  # the 13B's pass 2 at 720p (facts.md)
    for size in ((1280, 720), (720, 1280), (720, 720), (848, 480)):
        w, h = tiny_cpu_size(*size, 121, DOWNSCALE)
        assert second_pass_tokens(w, h, 121, DOWNSCALE) <= TINY_CPU_TOKEN_BUDGET
        assert abs(w / h - size[0] / size[1]) < 0.1


def test_requests_that_fit_are_left_alone():
    assert tiny_cpu_size(96, 64, 9, DOWNSCALE) is None
    assert tiny_cpu_size(256, 256, 25, DOWNSCALE) is None


def test_resize_frames_keeps_count_and_range():
    frames = np.random.default_rng(0).integers(0, 256, (17, 24, 40, 3), dtype=np.uint8)
    out = resize_frames(frames, 96, 64)
    assert out.shape == (17, 64, 96, 3) and out.dtype == np.uint8
    flat = np.full((3, 8, 8, 3), 77, dtype=np.uint8)
    assert (resize_frames(flat, 20, 12) == 77).all()  # a flat frame stays flat: no shift, no overflow


@pytest.mark.timeout(300)
def test_the_endpoint_generates_small_and_delivers_the_requested_size(tiny_components, monkeypatch, tmp_path):
    from ltxserve.config import Settings
    from ltxserve.engine.endpoint import ImageToVideoEndpoint
    from ltxserve.engine.schema import ImageToVideoInput
    from tests.api.helpers import png_data_uri

    import ltxserve.engine.endpoint as endpoint_module

    seen = {}

    def small_budget(width, height, num_frames, downscale):
        seen["asked"] = (width, height)
        return tiny_cpu_size(width, height, num_frames, downscale, budget=16)

    monkeypatch.setattr(endpoint_module, "tiny_cpu_size", small_budget)
    logs = []

    class Ctx:
        request_id = "r"

        def log(self, message, level="INFO"):
            logs.append((level, message))

        def progress(self, *a):
            pass

        def cancelled(self):
            return False

    endpoint = ImageToVideoEndpoint(Settings(data_dir=tmp_path), components=tiny_components)
    inp = ImageToVideoInput(prompt="x", image_url=png_data_uri(), num_frames=9, width=192, height=128,
                            first_pass_num_inference_steps=4, first_pass_skip_final_steps=1,
                            second_pass_num_inference_steps=4, second_pass_skip_initial_steps=2, seed=1)
    video = endpoint.generate(inp, Ctx())
    assert seen["asked"] == (192, 128)
    assert video.frames.shape == (9, 128, 192, 3)
    note = next(m for level, m in logs if "tiny model on a CPU" in m)
    assert "resizing to 192x128" in note and "about two minutes on 2 cores" in note
    work = tiny_cpu_size(192, 128, 9, DOWNSCALE, budget=16)
    assert work is not None and any(m.startswith(f"{work[0]}x{work[1]}, 9 frames") for _, m in logs)
    assert cpu_preview.cpu_note(192, 128, (96, 64)) == note
