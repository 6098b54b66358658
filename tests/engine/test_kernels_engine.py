"""The whole engine on the fused kernels (through Triton's interpreter on the CPU): frames match the reference
fixtures with the fidelity tests' tolerance, and the load log names the kernels in use."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from tests.engine import test_fidelity as fidelity  # noqa: E402  (skips the module when the fixtures are absent)

CASE = next(c for c in fidelity.CASES if c["name"] == "f_crf35_square_crop")  # the smallest: 128x128, 10+10 steps


@pytest.fixture(scope="module")
def kernel_components():
    from ltxserve.engine.models import load_components

    return load_components(fidelity.CHECKPOINT, device="cpu", dtype=torch.float32)


def _frames(components):
    from PIL import Image

    from ltxserve.engine import media, plan
    from ltxserve.engine.pipeline import GenerationInputs, generate_frames

    request = CASE["request"]
    config = fidelity._pipeline_config_for(CASE)
    geometry = plan.plan_geometry(request["width"], request["height"], request["num_frames"], config.downscale_factor)
    with Image.open(fidelity.FIXTURES / CASE["image"]) as image:
        conditioning = media.prepare_conditioning_image(image.convert("RGB"), request["width"], request["height"],
                                                        geometry.padding, request["constant_rate_factor"])
    inputs = GenerationInputs(prompt=request["prompt"], negative_prompt=request["negative_prompt"],
                              conditioning_image=conditioning, geometry=geometry, frame_rate=request["frame_rate"],
                              seed=request["seed"])
    return generate_frames(components, config, inputs)


@pytest.mark.slow
def test_engine_on_kernels_matches_the_reference_frames(kernel_components, caplog, monkeypatch):
    import kernels.ops
    from ltxserve.engine.speedups import install_speedups

    calls = {"rmsnorm_modulate": 0, "gate_residual": 0, "rope_qk": 0}
    for name in calls:  # count the kernel launches, so that "on" cannot silently mean the torch path
        original = getattr(kernels.ops, f"_{name}")

        def counted(*args, _original=original, _name=name):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(kernels.ops, f"_{name}", counted)
    with caplog.at_level(logging.INFO, logger="ltxserve.engine"):
        speedups = install_speedups(kernel_components, SimpleNamespace(use_triton_kernels="on"))
    assert speedups.kernels == ("rmsnorm_modulate", "rope_qk", "gate_residual")
    assert "kernels: rmsnorm_modulate, rope_qk, gate_residual" in caplog.text
    assert all(n == 1 for n in calls.values()), calls  # the load-time self-check ran each kernel once
    calls.update(dict.fromkeys(calls, 0))
    frames = _frames(kernel_components)
    blocks = len(kernel_components.transformer.transformer_blocks)
    assert calls["rope_qk"] > 0 and calls["rope_qk"] % blocks == 0
    assert calls["rmsnorm_modulate"] == calls["gate_residual"] == 2 * calls["rope_qk"]
    fidelity.assert_frames_match(np.asarray(frames), fidelity._golden_frames(CASE), CASE["name"] + " on kernels")
