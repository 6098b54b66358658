"""RoPE cos/sin tables computed once per pass, not once per transformer call.

Within a denoising pass every call passes views of the same `video_coords` tensor (the pipeline builds it once per
pass and expands it over the batch), so the tables depend only on that tensor. The cache hits only for a view of
the very same memory (same storage address, offset, strides, shape and dtype), and holds that view so the memory
cannot be freed and reused by another tensor while cached: identity, never a comparison of values, so no device
sync. (Views made under inference mode record no base tensor and no version counter, hence the storage address.)
The pipeline's STG controller drops the tables at the end of each pass (`release_rope_cache`), so nothing stays on
the device between jobs.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoRotaryPosEmbed


class CachedRotaryPosEmbed(LTXVideoRotaryPosEmbed):
    _cache = None  # (the coordinates view, key, (cos, sin))
    computed = 0  # tables computed (tests count them)

    def forward(self, hidden_states, num_frames=None, height=None, width=None, rope_interpolation_scale=None,
                video_coords=None):
        if video_coords is None:
            return super().forward(hidden_states, num_frames, height, width, rope_interpolation_scale, None)
        # strides of size-1 dimensions do not matter (a batch of 1 or a broadcast batch view the same values)
        strides = tuple(s if n > 1 else 0 for s, n in zip(video_coords.stride(), video_coords.shape))
        key = (video_coords.untyped_storage().data_ptr(), video_coords.storage_offset(), strides,
               tuple(video_coords.shape), video_coords.dtype, video_coords.device, hidden_states.size(0),
               hidden_states.device)
        if self._cache is None or self._cache[1] != key:
            tables = super().forward(hidden_states, num_frames, height, width, rope_interpolation_scale,
                                     video_coords)
            self._cache = (video_coords, key, tables)
            self.computed += 1
        return self._cache[2]


def install_rope_cache(transformer: torch.nn.Module) -> None:
    """Swap the class of the transformer's RoPE module (idempotent; it holds no weights)."""
    if type(transformer.rope) is LTXVideoRotaryPosEmbed:
        transformer.rope.__class__ = CachedRotaryPosEmbed


def release_rope_cache(transformer: torch.nn.Module) -> None:
    rope = getattr(transformer, "rope", None)
    if isinstance(rope, CachedRotaryPosEmbed):
        rope._cache = None
