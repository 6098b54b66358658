"""RoPE cos/sin tables computed once per geometry, not once per transformer call.

Within a denoising pass every call passes the same `video_coords` tensor (the pipeline builds it once per pass and
expands it over the batch), so the tables depend only on that tensor. The cache hits only for a view of the very
same coordinates tensor (identity of its base tensor, same offset, strides and shape; same version counter where
the tensor keeps one: inference-mode tensors do not): never a comparison of values, so no device sync. The tables
are dropped as soon as that tensor is freed (the end of the pass), so nothing stays on the device between jobs.
"""

from __future__ import annotations

import weakref

import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoRotaryPosEmbed


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference tensors track no version
        return None


class CachedRotaryPosEmbed(LTXVideoRotaryPosEmbed):
    _cache = None  # (weakref to the coordinates' base tensor, key, (cos, sin))
    computed = 0  # tables computed (tests count them)

    def forward(self, hidden_states, num_frames=None, height=None, width=None, rope_interpolation_scale=None,
                video_coords=None):
        if video_coords is None:
            return super().forward(hidden_states, num_frames, height, width, rope_interpolation_scale, None)
        root = video_coords
        while root._base is not None:
            root = root._base
        key = (video_coords.storage_offset(), video_coords.stride(), tuple(video_coords.shape), video_coords.dtype,
               video_coords.device, _version(root), hidden_states.size(0), hidden_states.device)
        cache = self._cache
        if cache is None or cache[0]() is not root or cache[1] != key:
            tables = super().forward(hidden_states, num_frames, height, width, rope_interpolation_scale,
                                     video_coords)
            owner = weakref.ref(self)
            source = weakref.ref(root, lambda _ref: _drop(owner, _ref))
            self._cache = cache = (source, key, tables)
            self.computed += 1
        return cache[2]


def _drop(owner: weakref.ref, source: weakref.ref) -> None:
    module = owner()
    if module is not None and module._cache is not None and module._cache[0] is source:
        module._cache = None


def install_rope_cache(transformer: torch.nn.Module) -> None:
    """Swap the class of the transformer's RoPE module (idempotent; it holds no weights)."""
    if type(transformer.rope) is LTXVideoRotaryPosEmbed:
        transformer.rope.__class__ = CachedRotaryPosEmbed
