"""Spatio-temporal guidance (STG) in the reference's `attention_values` mode, on diffusers' LTX attention.

For the perturbed copy of the batch, in the listed blocks, self-attention returns its values instead of attending:
out = to_out(to_v(x)) — the attention matrix replaced by the identity (Lightricks' SkipLayerStrategy.AttentionValues).
Other rows attend as usual. One processor instance is installed on every block's attn1 once; which rows and
blocks are perturbed is set per step, so no module is swapped inside the denoising loop.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor


class STGAttnProcessor(LTXVideoAttnProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.perturbed_rows: torch.Tensor | None = None  # (B,) bool; None = no perturbation

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        rows = self.perturbed_rows
        if rows is None or encoder_hidden_states is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        out = super().__call__(attn, hidden_states, None, attention_mask, image_rotary_emb)
        values = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))
        return torch.where(rows.view(-1, 1, 1), values, out)


class STGController:
    """Installs STG processors on the transformer's self-attentions and sets, per step, what they perturb."""

    def __init__(self, transformer: torch.nn.Module):
        self.processors: list[STGAttnProcessor] = []
        for block in transformer.transformer_blocks:
            processor = STGAttnProcessor()
            block.attn1.set_processor(processor)
            self.processors.append(processor)

    def set(self, blocks: tuple[int, ...], perturbed_rows: torch.Tensor | None) -> None:
        """Perturb `perturbed_rows` (bool per batch row) in `blocks`; everything else attends normally."""
        chosen = set(blocks) if perturbed_rows is not None else set()
        for i, p in enumerate(self.processors):
            p.perturbed_rows = perturbed_rows if i in chosen else None

    def clear(self) -> None:
        self.set((), None)
