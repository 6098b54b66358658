"""The LTX transformer's forward with its timestep given per *segment* of tokens, not per token.

In image-to-video every call has at most two distinct timesteps: the hard-conditioned first latent frame (its tokens
at 1 - mask = 0) and every other token (at t). diffusers' forward takes a per-token timestep and materialises the
adaLN values per token: the time embedding (batch x tokens x 6 x dim) once per call and the modulation table
(batch x tokens x 6 x dim) again in every block -- 4.6 GiB of a pass-2 step's 11 GiB on the 13B at 720p. Here the
embedding is computed for each distinct value and every modulation is applied segment by segment, on slices of the
tokens, so nothing of size tokens x 6 x dim exists. RoPE's cos/sin tables are computed once for the batch's first
row and broadcast (every row of a call shares the same positions).

The maths is diffusers' own, operation for operation (see LTXVideoTransformerBlock.forward and
LTXVideoTransformer3DModel.forward): only the shapes of the modulation tensors differ. It is installed by swapping
the classes of the loaded modules (no weights move), before any offload hook wraps their forwards, so group
offloading, STG's attention processors and LoRA hooks see the same modules and calls as before. Called without
`segments`, the forwards are diffusers' own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import LTXVideoTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock

Segments = Sequence[int]  # boundaries: (0, n_cond, n_tokens) = two segments; host integers, no device sync


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, segments: Segments) -> torch.Tensor:
    """x * (1 + scale) + shift with scale/shift (B, U, D) constant over each segment of x's tokens."""
    out = torch.empty_like(x) if scale.dtype == x.dtype else x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, scale.dtype))
    for u, (start, end) in enumerate(zip(segments[:-1], segments[1:])):
        out[:, start:end] = x[:, start:end] * (1 + scale[:, u: u + 1]) + shift[:, u: u + 1]
    return out


def _gated_add(base: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, segments: Segments) -> torch.Tensor:
    """base + x * gate with gate (B, U, D) constant over each segment."""
    out = torch.empty_like(base) if gate.dtype == base.dtype else base.new_empty(
        base.shape, dtype=torch.promote_types(base.dtype, torch.promote_types(x.dtype, gate.dtype)))
    for u, (start, end) in enumerate(zip(segments[:-1], segments[1:])):
        out[:, start:end] = base[:, start:end] + x[:, start:end] * gate[:, u: u + 1]
    return out


class SegmentedLTXBlock(LTXVideoTransformerBlock):
    # the fused kernels (kernels.rmsnorm_modulate / kernels.gate_residual) when ltxserve/engine/speedups.py turns
    # them on for this block; None: the torch ops below
    fused_norm_modulate = None
    fused_gate_residual = None

    def _norm_modulate(self, norm, x, scale, shift, segments):
        if self.fused_norm_modulate is not None and norm.weight is None:
            return self.fused_norm_modulate(x, scale, shift, segments, norm.eps)
        return _modulate(norm(x), scale, shift, segments)

    def _gated_add(self, base, x, gate, segments):
        if self.fused_gate_residual is not None:
            return self.fused_gate_residual(base, x, gate, segments)
        return _gated_add(base, x, gate, segments)

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                encoder_attention_mask=None, segments: Segments | None = None):
        if segments is None:
            return super().forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb,
                                   encoder_attention_mask)
        batch_size = hidden_states.size(0)
        num_ada_params = self.scale_shift_table.shape[0]
        # (B, U, 6, D): one row of adaLN values per distinct timestep, not per token
        ada_values = self.scale_shift_table[None, None].to(temb.device) + temb.reshape(
            batch_size, temb.size(1), num_ada_params, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada_values.unbind(dim=2)
        norm_hidden_states = self._norm_modulate(self.norm1, hidden_states, scale_msa, shift_msa, segments)

        attn_hidden_states = self.attn1(hidden_states=norm_hidden_states, encoder_hidden_states=None,
                                        image_rotary_emb=image_rotary_emb)
        hidden_states = self._gated_add(hidden_states, attn_hidden_states, gate_msa, segments)

        attn_hidden_states = self.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                        image_rotary_emb=None, attention_mask=encoder_attention_mask)
        hidden_states = hidden_states + attn_hidden_states
        norm_hidden_states = self._norm_modulate(self.norm2, hidden_states, scale_mlp, shift_mlp, segments)

        ff_output = self.ff(norm_hidden_states)
        return self._gated_add(hidden_states, ff_output, gate_mlp, segments)


class SegmentedLTXTransformer(LTXVideoTransformer3DModel):
    def forward(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, num_frames=None,
                height=None, width=None, rope_interpolation_scale=None, video_coords=None, attention_kwargs=None,
                return_dict=True, segments: Segments | None = None):
        """With `segments`, `timestep` is (B, U): the timestep of each of the U segments whose token boundaries
        `segments` (U + 1 host integers) gives."""
        if segments is None:
            return super().forward(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask,
                                   num_frames, height, width, rope_interpolation_scale, video_coords,
                                   attention_kwargs, return_dict)
        batch_size = hidden_states.size(0)
        if timestep.shape != (batch_size, len(segments) - 1) or segments[-1] != hidden_states.size(1):
            raise ValueError(f"segments {tuple(segments)} do not fit timestep {tuple(timestep.shape)} and "
                             f"{hidden_states.size(1)} tokens")
        # every row of a call has the same positions: cos/sin for the first row, broadcast to the batch
        cos, sin = self.rope(hidden_states[:1], num_frames, height, width, rope_interpolation_scale,
                             None if video_coords is None else video_coords[:1])
        image_rotary_emb = (cos.expand(batch_size, -1, -1), sin.expand(batch_size, -1, -1))

        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)

        hidden_states = self.proj_in(hidden_states)
        temb, embedded_timestep = self.time_embed(timestep.flatten(), batch_size=batch_size,
                                                  hidden_dtype=hidden_states.dtype)
        temb = temb.view(batch_size, -1, temb.size(-1))  # (B, U, 6D)
        embedded_timestep = embedded_timestep.view(batch_size, -1, embedded_timestep.size(-1))  # (B, U, D)

        encoder_hidden_states = self.caption_projection(encoder_hidden_states)
        encoder_hidden_states = encoder_hidden_states.view(batch_size, -1, hidden_states.size(-1))

        for block in self.transformer_blocks:
            hidden_states = block(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                  temb=temb, image_rotary_emb=image_rotary_emb,
                                  encoder_attention_mask=encoder_attention_mask, segments=segments)

        scale_shift_values = self.scale_shift_table[None, None] + embedded_timestep[:, :, None]
        shift, scale = scale_shift_values[:, :, 0], scale_shift_values[:, :, 1]
        hidden_states = _modulate(self.norm_out(hidden_states), scale, shift, segments)
        output = self.proj_out(hidden_states)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


def install_segmented_forward(transformer: LTXVideoTransformer3DModel) -> LTXVideoTransformer3DModel:
    """Swap the classes of a loaded transformer and its blocks (idempotent; weights untouched)."""
    if type(transformer) is LTXVideoTransformer3DModel:
        transformer.__class__ = SegmentedLTXTransformer
    for block in transformer.transformer_blocks:
        if type(block) is LTXVideoTransformerBlock:
            block.__class__ = SegmentedLTXBlock
    return transformer


def is_segmented(transformer: torch.nn.Module) -> bool:
    return isinstance(transformer, SegmentedLTXTransformer)
