"""Cancellation inside a denoising step: checked before each transformer block, not only between steps.

A step of the 13B model at 720p takes seconds to minutes; checking only between steps let a cancel wait that long.
`cancel_between_blocks` registers a forward pre-hook on every `transformer.transformer_blocks[i]` that asks
`should_cancel()` (at most every `min_interval` seconds, so a store query per block never adds up) and raises
JobCancelled, which unwinds the pipeline like the between-steps check does. With 48 blocks per forward the cancel
lands within about one block of GPU time.

Install it around generation (the pipeline's owner wires it where `should_cancel` is at hand):

    with cancel_between_blocks(components.transformer, ctx.cancelled):
        frames = generate_frames(...)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from ltxserve.engine.contract import JobCancelled


@contextmanager
def cancel_between_blocks(transformer: torch.nn.Module, should_cancel: Callable[[], bool], *,
                          min_interval: float = 0.1) -> Iterator[None]:
    """While inside, every transformer block first checks `should_cancel` and raises JobCancelled when it is true.

    The hooks are removed on exit, whatever happened, so the shared model is left exactly as it was."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise TypeError(f"{type(transformer).__name__} has no transformer_blocks to hook")
    last_check = [float("-inf")]
    cancelled = [False]

    def check(_module: torch.nn.Module, _args) -> None:
        if not cancelled[0]:
            now = time.monotonic()
            if now - last_check[0] < min_interval:
                return
            last_check[0] = now
            cancelled[0] = bool(should_cancel())
        if cancelled[0]:
            raise JobCancelled()

    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
