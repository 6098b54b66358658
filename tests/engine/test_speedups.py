"""The speedup settings: auto/on/off resolution, the default CPU path unchanged, one log line at load."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from ltxserve.engine.attention import DirectLTXAttention
from ltxserve.engine.models import build_tiny_components
from ltxserve.engine.rope_cache import CachedRotaryPosEmbed
from ltxserve.engine.speedups import install_speedups, kernels_wanted

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("setting, device, wanted", [
    ("auto", CPU, False), ("auto", CUDA, True), (True, CPU, False), (True, CUDA, True),
    ("on", CPU, True), ("off", CUDA, False), (False, CUDA, False), ("OFF", CUDA, False),
])
def test_kernel_switch(setting, device, wanted):
    pytest.importorskip("triton")
    assert kernels_wanted(setting, device) is wanted


def test_kernel_switch_refuses_other_values():
    with pytest.raises(ValueError):
        kernels_wanted("fast", CPU)


def test_default_settings_on_the_cpu_keep_the_torch_path_and_log_it(caplog):
    from ltxserve.config import Settings

    c = build_tiny_components()
    with caplog.at_level(logging.INFO, logger="ltxserve.engine"):
        speedups = install_speedups(c, Settings())
    assert speedups.kernels == () and not speedups.compiled
    assert "kernels: none (torch ops); attention: default" in caplog.text
    block = c.transformer.transformer_blocks[0]
    assert block.fused_norm_modulate is None and block.fused_gate_residual is None
    assert block.attn1.processor.backend is None and block.attn1.processor.rope_qk is None
    assert isinstance(block.attn1, DirectLTXAttention) and isinstance(c.transformer.rope, CachedRotaryPosEmbed)


def test_kernels_on_then_off_again():
    pytest.importorskip("triton")
    c = build_tiny_components()
    assert install_speedups(c, SimpleNamespace(use_triton_kernels="on")).kernels == (
        "rmsnorm_modulate", "rope_qk", "gate_residual")
    assert all(b.attn1.processor.rope_qk is not None for b in c.transformer.transformer_blocks)
    assert install_speedups(c, SimpleNamespace(use_triton_kernels="off")).kernels == ()
    assert all(b.fused_gate_residual is None and b.attn1.processor.rope_qk is None
               for b in c.transformer.transformer_blocks)


def test_transformer_on_kernels_equals_the_torch_ops_with_stg():
    """A fast guard beside the slow fixture test (test_kernels_engine.py): one segmented call, STG on a row."""
    pytest.importorskip("triton")
    from ltxserve.engine.stg import STGController

    c = build_tiny_components()
    g = torch.Generator().manual_seed(0)
    batch, tokens = 3, 24
    args = dict(hidden_states=torch.randn(batch, tokens, 16, generator=g),
                encoder_hidden_states=torch.randn(batch, 5, 32, generator=g),
                encoder_attention_mask=torch.ones(batch, 5), timestep=torch.tensor([[0.0, 700.0]] * batch),
                video_coords=(torch.rand(1, 3, tokens, generator=g) * 40).expand(batch, -1, -1),
                segments=(0, 8, tokens), return_dict=False)
    STGController(c.transformer).set((2, 19), torch.tensor([False, False, True]))
    outputs = {}
    with torch.inference_mode():
        for mode in ("off", "on"):
            install_speedups(c, SimpleNamespace(use_triton_kernels=mode))
            outputs[mode] = c.transformer(**args)[0]
    torch.testing.assert_close(outputs["on"], outputs["off"], rtol=1e-4, atol=1e-4)
