"""The two-pass generation on the tiny model: shape, determinism, cancellation, and the guidance arithmetic."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ltxserve.engine.contract import JobCancelled
from ltxserve.engine.pipeline import GenerationInputs, adain_filter_latent, generate_frames, guide, lower_timesteps
from ltxserve.engine.plan import LTXV_13B_097_DEV, StepGuidance, plan_geometry, with_steps
from ltxserve.engine.stg import STGController

SMALL = with_steps(LTXV_13B_097_DEV, 8, 1, 8, 4)


def _inputs(seed=1, width=96, height=64, frames=9):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 1, 80, 120, generator=g) * 2 - 1
    return GenerationInputs(prompt="a boat on a lake", negative_prompt="blurry", conditioning_image=image,
                            geometry=plan_geometry(width, height, frames, SMALL.downscale_factor), frame_rate=25,
                            seed=seed)


def test_two_pass_generation_runs_end_to_end_quickly(tiny_components):
    steps = []
    start = time.perf_counter()
    frames = generate_frames(tiny_components, SMALL, _inputs(), on_step=lambda s, t, stage: steps.append((s, t, stage)))
    elapsed = time.perf_counter() - start
    assert frames.shape == (9, 64, 96, 3) and frames.dtype == np.uint8
    assert frames.std() > 1  # not a constant image
    assert [s for s in steps if s[2] == "pass 1"][-1][:2] == (7, 7)
    assert [s for s in steps if s[2] == "pass 2"][-1][:2] == (4, 4)
    assert elapsed < 30  # about a second on a free core; generous for a loaded CI machine


def test_same_seed_same_frames_other_seed_differs(tiny_components):
    a = generate_frames(tiny_components, SMALL, _inputs(seed=5))
    b = generate_frames(tiny_components, SMALL, _inputs(seed=5))
    c = generate_frames(tiny_components, SMALL, _inputs(seed=6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_padding_and_frame_count_are_cropped_back(tiny_components):
    frames = generate_frames(tiny_components, SMALL, _inputs(width=100, height=70, frames=12))
    assert frames.shape == (12, 70, 100, 3)


def test_cancellation_stops_at_the_next_step(tiny_components):
    seen = []
    with pytest.raises(JobCancelled):
        generate_frames(tiny_components, SMALL, _inputs(), on_step=lambda s, t, st: seen.append(s),
                        should_cancel=lambda: len(seen) >= 3)
    assert len(seen) == 3


def test_stg_perturbs_only_the_perturbed_row_in_listed_blocks(tiny_components):
    tr = tiny_components.transformer
    stg = STGController(tr)
    g = torch.Generator().manual_seed(0)
    args = dict(hidden_states=torch.randn(1, 6, 16, generator=g).repeat(2, 1, 1),
                encoder_hidden_states=torch.randn(1, 4, 32, generator=g).repeat(2, 1, 1),
                timestep=torch.full((2, 6), 400.0), encoder_attention_mask=torch.ones(2, 4),
                video_coords=(torch.rand(1, 3, 6, generator=g) * 50).repeat(2, 1, 1), return_dict=False)
    with torch.inference_mode():
        stg.clear()
        plain = tr(**args)[0]
        stg.set((5,), torch.tensor([False, True]))
        perturbed = tr(**args)[0]
        stg.clear()
    torch.testing.assert_close(perturbed[0], plain[0])
    assert (perturbed[1] - plain[1]).abs().max() > 1e-4
    # and by hand: block 5's self-attention on the perturbed row is to_out(to_v(x))
    attn = tr.transformer_blocks[5].attn1
    x = torch.randn(2, 6, 16, generator=g)
    stg.set((5,), torch.tensor([False, True]))
    with torch.inference_mode():
        out = attn(x, image_rotary_emb=tr.rope(x, video_coords=args["video_coords"]))
    stg.clear()
    torch.testing.assert_close(out[1], attn.to_out[0](attn.to_v(x[1])))


def test_guidance_arithmetic_against_hand_computation():
    g = torch.Generator().manual_seed(1)
    u, c, p = (torch.randn(1, 5, 4, generator=g) for _ in range(3))
    step = StepGuidance(timestep=0.99, guidance_scale=6.0, stg_scale=4.0, rescaling_scale=0.5, skip_block_list=(1,))
    out = guide(torch.cat([u, c, p]), step, cfg_star_rescale=True)
    alpha = (c * u).sum() / ((u * u).sum() + 1e-8)
    expected = alpha * u + 6.0 * (c - alpha * u) + 4.0 * (c - p)
    factor = 0.5 * (c.std() / expected.std()) + 0.5
    torch.testing.assert_close(out, expected * factor)
    stg_only = StepGuidance(timestep=0.9, guidance_scale=1.0, stg_scale=2.0, rescaling_scale=1.0, skip_block_list=(1,))
    torch.testing.assert_close(guide(torch.cat([c, p]), stg_only, True), c + 2.0 * (c - p))
    plain = StepGuidance(timestep=1.0, guidance_scale=1.0, stg_scale=0.0, rescaling_scale=1.0, skip_block_list=())
    torch.testing.assert_close(guide(c, plain, True), c)


def test_adain_matches_reference_statistics():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 2, 4, 5, generator=g) * 3 + 1
    ref = torch.randn(1, 3, 2, 2, 3, generator=g) * 0.5 - 2
    out = adain_filter_latent(x, ref)
    for ch in range(3):
        torch.testing.assert_close(out[0, ch].mean(), ref[0, ch].mean(), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[0, ch].std(), ref[0, ch].std(), atol=1e-5, rtol=0)


def test_euler_targets_the_next_lower_timestep():
    ts = torch.tensor([1.0, 0.9, 0.5])
    per_token = torch.tensor([[0.9, 0.0, 0.5, 1.0]])
    torch.testing.assert_close(lower_timesteps(per_token, ts), torch.tensor([[0.5, 0.0, 0.0, 0.9]]))
