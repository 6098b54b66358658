"""The transformer's self-attention processors: spatio-temporal guidance (STG) in the reference's
`attention_values` mode, the chosen attention backend and the fused q/k norm + RoPE kernel, installed once.

For the perturbed copy of the batch, in the listed blocks, self-attention returns its values instead of attending:
out = to_out(to_v(x)) — the attention matrix replaced by the identity (Lightricks' SkipLayerStrategy.AttentionValues).
Other rows attend as usual. One processor instance lives on every block's attn1 from load time on (models.py
installs them, the endpoint configures them); which rows and blocks are perturbed is set per step, so no module is
swapped inside the denoising loop or per job, and the attention backend chosen at load holds under STG.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor, apply_rotary_emb

from ltxserve.engine.attention import AttentionBackend
from ltxserve.engine.rope_cache import release_rope_cache


class STGAttnProcessor(LTXVideoAttnProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.perturbed_rows: torch.Tensor | None = None  # (B,) bool; None = no perturbation
        self.backend: AttentionBackend | None = None  # None: diffusers' dispatch, as without ltxserve
        self.rope_qk: Callable | None = None  # kernels.rope_qk.rope_qk when the kernels are on

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        rows = self.perturbed_rows
        if encoder_hidden_states is not None or attention_mask is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if self.backend is None and self.rope_qk is None:  # diffusers' own path, exactly as before
            out = super().__call__(attn, hidden_states, None, None, image_rotary_emb)
            if rows is None:
                return out
            values = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))
        else:
            out, value = self._self_attention(attn, hidden_states, image_rotary_emb)
            if rows is None:
                return out
            values = attn.to_out[1](attn.to_out[0](value))  # to_v(x) computed once for both
        return torch.where(rows.view(-1, 1, 1), values, out)

    def _self_attention(self, attn, hidden_states, image_rotary_emb):
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if self.rope_qk is not None and image_rotary_emb is not None:
            cos, sin = image_rotary_emb
            query, key = self.rope_qk(query, key, attn.norm_q.weight, attn.norm_k.weight, cos, sin, attn.norm_q.eps)
        else:
            query, key = attn.norm_q(query), attn.norm_k(key)
            if image_rotary_emb is not None:
                query = apply_rotary_emb(query, image_rotary_emb)
                key = apply_rotary_emb(key, image_rotary_emb)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if self.backend is not None:
            out = self.backend.attend(q, k, v)
        else:
            out = dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).to(query.dtype)))
        return out, value


def install_stg_processors(transformer: torch.nn.Module) -> list[STGAttnProcessor]:
    """Give every block's attn1 an STGAttnProcessor, keeping any already there (idempotent)."""
    processors = []
    for block in transformer.transformer_blocks:
        if not isinstance(block.attn1.processor, STGAttnProcessor):
            block.attn1.set_processor(STGAttnProcessor())
        processors.append(block.attn1.processor)
    return processors


def configure_attention(transformer: torch.nn.Module, backend: AttentionBackend | None,
                        rope_qk: Callable | None) -> None:
    """Set the self-attention backend and the q/k norm + RoPE kernel (None: torch) on every block's processor."""
    if rope_qk is not None:
        for block in transformer.transformer_blocks:
            if block.attn1.norm_q.eps != block.attn1.norm_k.eps:
                raise ValueError("rope_qk needs one eps for norm_q and norm_k")
    for p in install_stg_processors(transformer):
        p.backend, p.rope_qk = backend, rope_qk


class STGController:
    """Sets, per step, what the transformer's permanent STG processors perturb (installing them if the transformer
    came without them, e.g. one not loaded through models.py)."""

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer
        self.processors: list[STGAttnProcessor] = install_stg_processors(transformer)

    def set(self, blocks: tuple[int, ...], perturbed_rows: torch.Tensor | None) -> None:
        """Perturb `perturbed_rows` (bool per batch row) in `blocks`; everything else attends normally."""
        chosen = set(blocks) if perturbed_rows is not None else set()
        for i, p in enumerate(self.processors):
            p.perturbed_rows = perturbed_rows if i in chosen else None

    def clear(self) -> None:
        """The end of a pass (pipeline.py calls it after the loop): no perturbation, and the pass's RoPE tables
        dropped (rope_cache.py)."""
        self.set((), None)
        release_rope_cache(self.transformer)
