"""The transformer's forward with timesteps per token segment: the same output as diffusers' per-token forward,
without any tensor of tokens x 6 x dim (the per-token adaLN values)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ltxserve.engine.models import build_tiny_components
from ltxserve.engine.segmented import is_segmented


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _call(transformer, per_token: bool):
    g = torch.Generator().manual_seed(0)
    batch, frames, hw = 2, 3, 12
    tokens = frames * hw
    n_cond = hw  # the first latent frame is the conditioning
    t = 0.7
    args = dict(hidden_states=torch.randn(batch, tokens, 16, generator=g),
                encoder_hidden_states=torch.randn(batch, 5, 32, generator=g),
                encoder_attention_mask=torch.ones(batch, 5),
                video_coords=(torch.rand(1, 3, tokens, generator=g) * 40).expand(batch, -1, -1),
                return_dict=False)
    if per_token:
        timestep = torch.full((batch, tokens), t * 1000)
        timestep[:, :n_cond] = 0.0
        return transformer(timestep=timestep, **args)[0]
    timestep = torch.tensor([[0.0, t * 1000]] * batch)
    return transformer(timestep=timestep, segments=(0, n_cond, tokens), **args)[0]


def test_segmented_forward_equals_the_per_token_forward():
    transformer = build_tiny_components().transformer
    assert is_segmented(transformer)
    with torch.inference_mode():
        torch.testing.assert_close(_call(transformer, per_token=False), _call(transformer, per_token=True),
                                   rtol=1e-5, atol=1e-5)


def test_no_tensor_of_tokens_times_six_dims():
    transformer = build_tiny_components().transformer
    batch, tokens, dim = 2, 36, 16
    per_token_ada = batch * tokens * 6 * dim
    with torch.inference_mode():
        with _LargestTensor() as per_token:
            _call(transformer, per_token=True)
        with _LargestTensor() as segmented:
            _call(transformer, per_token=False)
    assert per_token.largest >= per_token_ada  # diffusers' per-token adaLN table
    assert segmented.largest < per_token_ada, segmented.largest
