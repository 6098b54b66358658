"""No repeated work per step: RoPE tables once per pass, no inspect.signature per attention call, and no
data-dependent host reads (the CPU stand-in for torch.cuda.set_sync_debug_mode) inside the denoising loop."""

from __future__ import annotations

import inspect
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ltxserve.engine import pipeline
from ltxserve.engine.models import build_tiny_components
from ltxserve.engine.pipeline import GenerationInputs, generate_frames
from ltxserve.engine.plan import LTXV_13B_097_DEV, plan_geometry, with_steps
from ltxserve.engine.rope_cache import CachedRotaryPosEmbed
from ltxserve.engine.speedups import install_speedups

CONFIG = with_steps(LTXV_13B_097_DEV, 4, 1, 4, 2)
# each of these copies a tensor's value to the host: on a GPU, a sync that stalls the queue of kernels
HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
              torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.__format__}


def _loop_lines() -> range:
    """Source lines of denoise_pass's denoising loop (from `for i, g in enumerate(schedule)` to `stg.clear()`)."""
    lines, first = inspect.getsourcelines(pipeline.denoise_pass)
    start = next(i for i, line in enumerate(lines) if "for i, g in enumerate(schedule)" in line)
    end = next(i for i, line in enumerate(lines) if "stg.clear()" in line)
    return range(first + start, first + end)


class _HostReadsInLoop(TorchFunctionMode):
    """Records every host read of a tensor's value made while denoise_pass's loop is on the stack."""

    def __init__(self):
        super().__init__()
        self.loop = _loop_lines()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code is pipeline.denoise_pass.__code__ and frame.f_lineno in self.loop:
                    self.found.append(f"{func.__name__} at pipeline.py:{frame.f_lineno}")
                    break
                frame = frame.f_back
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def components():
    c = build_tiny_components(seed=0)
    install_speedups(c, SimpleNamespace(use_triton_kernels="off"))
    return c


def _inputs():
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 1, 64, 96, generator=g) * 2 - 1
    return GenerationInputs(prompt="a boat", negative_prompt="blurry", conditioning_image=image,
                            geometry=plan_geometry(96, 64, 9, CONFIG.downscale_factor), frame_rate=25, seed=1)


def test_no_host_reads_in_the_denoising_loop_and_rope_once_per_pass(components):
    rope = components.transformer.rope
    assert isinstance(rope, CachedRotaryPosEmbed)
    before = rope.computed
    with _HostReadsInLoop() as reads:
        generate_frames(components, CONFIG, _inputs())
    assert reads.found == []
    assert rope.computed - before == 2  # one table per pass, though each pass calls the transformer every step
    assert rope._cache is None  # dropped at the end of the pass: nothing held between jobs


def test_a_host_read_in_the_loop_would_be_caught(components, monkeypatch):
    original = pipeline.guide

    def guide_with_a_sync(noise_pred, g, rescale):
        if noise_pred.abs().max().item() > 1e9:  # a data-dependent branch: a device sync on a GPU
            pass
        return original(noise_pred, g, rescale)

    monkeypatch.setattr(pipeline, "guide", guide_with_a_sync)
    with _HostReadsInLoop() as reads:
        generate_frames(components, CONFIG, _inputs())
    assert reads.found and reads.found[0].startswith("item")


def test_attention_calls_skip_inspect_signature(components, monkeypatch):
    calls = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(a) or real(*a, **k))
    block = components.transformer.transformer_blocks[0]
    x = torch.randn(1, 4, block.attn1.query_dim)
    with torch.inference_mode():
        block.attn1(x)
        block.attn2(x, encoder_hidden_states=torch.randn(1, 3, block.attn2.cross_attention_dim))
    assert calls == []
