"""The self-attention backend chosen at load is the one attn1 runs, also while STG perturbs a row; the STG
processors are installed once and reused by every job's controller."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ltxserve.engine.attention import AttentionBackend, choose_attention_backend
from ltxserve.engine.models import build_tiny_components
from ltxserve.engine.stg import STGAttnProcessor, STGController, configure_attention

TOKENS, TEXT = 36, 5


class _SdpaCalls(TorchFunctionMode):
    """Records, for each scaled_dot_product_attention call, its key length and which SDPA kernels are allowed."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            key = args[1] if len(args) > 1 else kwargs["key"]  # self-attention: keys are the video tokens
            self.calls.append((key.shape[-2], torch.backends.cuda.flash_sdp_enabled(),
                               torch.backends.cuda.math_sdp_enabled()))
        return func(*args, **(kwargs or {}))


def _kernel_calls(profile, name: str) -> int:
    """Profiled calls of the aten kernel `name` on self-attention inputs (keys of TOKENS tokens)."""
    return sum(1 for e in profile.events()
               if e.name == name and e.input_shapes and len(e.input_shapes[1]) == 4 and e.input_shapes[1][2] == TOKENS)


def _forward(transformer, batch=3):
    g = torch.Generator().manual_seed(0)
    return transformer(hidden_states=torch.randn(batch, TOKENS, 16, generator=g),
                       encoder_hidden_states=torch.randn(batch, TEXT, 32, generator=g),
                       encoder_attention_mask=torch.ones(batch, TEXT), timestep=torch.tensor([[0.0, 700.0]] * batch),
                       video_coords=(torch.rand(1, 3, TOKENS, generator=g) * 40).expand(batch, -1, -1),
                       segments=(0, 12, TOKENS), return_dict=False)[0]


def test_stg_processors_are_permanent_and_reused_by_each_jobs_controller():
    transformer = build_tiny_components().transformer
    installed = [b.attn1.processor for b in transformer.transformer_blocks]
    assert all(isinstance(p, STGAttnProcessor) for p in installed)  # at load (models.py)
    configure_attention(transformer, AttentionBackend("math", (torch.nn.attention.SDPBackend.MATH,)), None)
    controller = STGController(transformer)  # as pipeline.py builds one per job
    assert controller.processors == installed
    assert all(p.backend.name == "math" for p in controller.processors)  # the chosen backend survived


@pytest.mark.parametrize("backend_name, flash_allowed", [("math", False), ("flash", True)])
def test_chosen_backend_runs_self_attention_while_stg_perturbs_a_row(backend_name, flash_allowed):
    transformer = build_tiny_components().transformer
    blocks = len(transformer.transformer_blocks)
    with torch.inference_mode():
        reference = _forward(transformer)
        stg = STGController(transformer)
        perturbed = torch.tensor([False, False, True])
        stg.set((3, 17), perturbed)
        expected = _forward(transformer)  # diffusers' default dispatch, STG on rows 2 in blocks 3 and 17
        configure_attention(transformer, choose_attention_backend(torch.device("cpu"), backend_name), None)
        with _SdpaCalls() as sdpa, torch.profiler.profile(record_shapes=True) as profile:
            actual = _forward(transformer)
    self_calls = [c for c in sdpa.calls if c[0] == TOKENS]
    assert len(self_calls) == blocks
    assert all(c[1:] == (flash_allowed, not flash_allowed) for c in self_calls), self_calls
    # the kernel that actually ran: CPU flash attention, or the math composition
    assert _kernel_calls(profile, "aten::_scaled_dot_product_flash_attention_for_cpu") == (blocks if flash_allowed else 0)
    assert _kernel_calls(profile, "aten::_scaled_dot_product_attention_math") == (0 if flash_allowed else blocks)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected[2], reference[2], atol=1e-4)  # STG did change the perturbed row
    torch.testing.assert_close(expected[:2], reference[:2], rtol=1e-5, atol=1e-5)


def test_auto_keeps_the_default_dispatch_on_the_cpu_and_refuses_unknown_names():
    assert choose_attention_backend(torch.device("cpu"), "auto") is None
    with pytest.raises(ValueError):
        choose_attention_backend(torch.device("cpu"), "fa3")  # no Hopper GPU here
    with pytest.raises(ValueError):
        choose_attention_backend(torch.device("cpu"), "fastest")
