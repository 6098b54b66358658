"""Regional compilation: torch.compile on each transformer block, not on the whole model.

The 48 blocks share one forward, so with torch's inlined nn.Module parameters (dynamo's default since 2.5) one
compiled graph serves every block; the guidance batch sizes 1-3 differ in one dimension, which dynamo makes dynamic
after the second size it sees, so they cost one recompile, not one per block or per size. The warm-up runs the
transformer at the default geometry (pass 1 and pass 2 token counts, batch 1 to 3) at load, so the first request
does not pay the compilation.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import torch

log = logging.getLogger("ltxserve.engine")


def compile_blocks(transformer: torch.nn.Module, *, backend="inductor", mode: str | None = None,
                   dynamic: bool | None = None) -> int:
    """Compile every transformer block in place (nn.Module.compile); returns how many."""
    for block in transformer.transformer_blocks:
        block.compile(backend=backend, mode=mode, dynamic=dynamic)
    return len(transformer.transformer_blocks)


def blocks_compiled(transformer: torch.nn.Module) -> bool:
    return all(getattr(b, "_compiled_call_impl", None) is not None for b in transformer.transformer_blocks)


@torch.inference_mode()
def warm_up(transformer: torch.nn.Module, *, token_counts: Sequence[int], tokens_conditioned: Sequence[int],
            batch_sizes: Sequence[int] = (1, 2, 3), text_tokens: int = 256, device: torch.device,
            dtype: torch.dtype) -> float:
    """Run the transformer once for each geometry and batch size (random inputs): seconds spent, logged."""
    start = time.perf_counter()
    config = transformer.config
    for n_tokens, n_cond in zip(token_counts, tokens_conditioned):
        for batch in batch_sizes:
            coords = torch.rand(1, 3, n_tokens, device=device).expand(batch, -1, -1) * 10
            transformer(
                hidden_states=torch.randn(batch, n_tokens, config.in_channels, device=device, dtype=dtype),
                encoder_hidden_states=torch.randn(batch, text_tokens, config.caption_channels, device=device,
                                                  dtype=dtype),
                timestep=torch.tensor([[0.0, 500.0]] * batch, device=device),
                encoder_attention_mask=torch.ones(batch, text_tokens, device=device),
                video_coords=coords, return_dict=False, segments=(0, n_cond, n_tokens))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    log.info("compiled transformer blocks warmed up for %s tokens x batch %s in %.1f s",
             "/".join(map(str, token_counts)), "/".join(map(str, batch_sizes)), seconds)
    return seconds
