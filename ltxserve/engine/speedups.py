"""What makes the transformer fast, applied once at load: fused Triton kernels, the self-attention backend (kept
under STG by the permanent processors), the RoPE cache, direct attention calls, and compiled blocks.

Settings read (Settings fields; `getattr` defaults until they exist everywhere):
- `use_triton_kernels`: auto | on | off (True/False mean auto/off). auto: on CUDA when triton is installed; on: also
  on the CPU, through Triton's interpreter (slow; for tests); off: torch ops.
- `attention_backend`: auto | default | fa3 | cudnn | flash | efficient | math (engine/attention.py).
- `compile_blocks`: auto | on | off. auto: on CUDA unless the blocks are streamed (sequential placement); on: also on
  the CPU; warm-up for the default geometry at load; under auto a compiler failure leaves the blocks eager.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

from ltxserve.engine.attention import choose_attention_backend, install_direct_attention_calls
from ltxserve.engine.rope_cache import install_rope_cache
from ltxserve.engine.stg import configure_attention

log = logging.getLogger("ltxserve.engine")

# the 13B default request (1280x720, 121 frames): 26x15 then 52x30 latents x 16 latent frames, the first conditioned
DEFAULT_TOKENS = (26 * 15 * 16, 52 * 30 * 16)
DEFAULT_CONDITIONED_TOKENS = (26 * 15, 52 * 30)


@dataclass(frozen=True)
class Speedups:
    kernels: tuple[str, ...]
    attention: str
    compiled: bool
    compile_seconds: float = 0.0


def _switch(value, name: str) -> str:
    if value is True:
        return "auto"
    if value is False or value is None:
        return "off"
    value = str(value).strip().lower()
    if value not in ("auto", "on", "off"):
        raise ValueError(f"{name}: expected auto, on or off, got {value!r}")
    return value


def kernels_wanted(setting, device: torch.device) -> bool:
    mode = _switch(setting, "use_triton_kernels")
    has_triton = importlib.util.find_spec("triton") is not None
    if mode == "on" and not has_triton:
        raise RuntimeError("--kernels on needs the triton package (pip install 'ltxserve[kernels]')")
    return mode == "on" or (mode == "auto" and device.type == "cuda" and has_triton)


def install_kernels(transformer: torch.nn.Module, enabled: bool) -> tuple[str, ...]:
    """Point every block at the fused kernels (or back at the torch ops); returns the kernels in use."""
    ops = None
    if enabled:
        from kernels import ops

    for block in transformer.transformer_blocks:
        block.fused_norm_modulate = ops.rmsnorm_modulate if ops else None
        block.fused_gate_residual = ops.gate_residual if ops else None
    return ("rmsnorm_modulate", "rope_qk", "gate_residual") if ops else ()


def install_speedups(components, settings, *, warm_up_geometry: bool = True) -> Speedups:
    """Apply the settings to `components.transformer` (idempotent) and log one line naming what is in use."""
    transformer, device = components.transformer, components.device
    install_direct_attention_calls(transformer)
    install_rope_cache(transformer)
    setting = getattr(settings, "use_triton_kernels", "auto")
    wanted = kernels_wanted(setting, device)
    if wanted:
        from kernels.selfcheck import selfcheck

        problems = selfcheck(device, components.dtype)
        if problems and _switch(setting, "use_triton_kernels") == "on":
            raise RuntimeError("--kernels on: the kernels fail on this device: " + "; ".join(problems))
        if problems:
            log.warning("kernels off: they fail their self-check on this device (%s)", "; ".join(problems))
            wanted = False
    names = install_kernels(transformer, wanted)
    backend = choose_attention_backend(device, getattr(settings, "attention_backend", "auto"))
    rope_qk = None
    if names:
        from kernels.ops import rope_qk
    configure_attention(transformer, backend, rope_qk)
    attention = backend.name if backend else "default (SDPA's own choice)"
    log.info("kernels: %s; attention: %s", ", ".join(names) if names else "none (torch ops)", attention)

    compiled, seconds = False, 0.0
    compile_mode = _switch(getattr(settings, "compile_blocks", "off"), "compile_blocks")
    # auto leaves blocks that are streamed in by group offloading (sequential placement) eager: their hooks move
    # weights inside the call, which a compiled region would only break around
    streamed = any(getattr(b, "_diffusers_hook", None) is not None for b in transformer.transformer_blocks)
    if compile_mode == "on" or (compile_mode == "auto" and device.type == "cuda" and not streamed):
        from ltxserve.engine.compile import blocks_compiled, compile_blocks, warm_up

        try:
            if not blocks_compiled(transformer):
                compile_blocks(transformer)
            compiled = True
            if warm_up_geometry and not components.is_tiny:
                # the batch sizes each pass runs at the default request: 1-3 in pass 1 (the guidance table), 2 in
                # pass 2 (STG only), so the warm-up never needs more memory than the request it prepares for
                for tokens, conditioned, batches in zip(DEFAULT_TOKENS, DEFAULT_CONDITIONED_TOKENS, ((1, 2, 3), (2,))):
                    seconds += warm_up(transformer, token_counts=(tokens,), tokens_conditioned=(conditioned,),
                                       batch_sizes=batches, device=device, dtype=components.dtype)
        except Exception as exc:  # a compiler that fails on this machine must not take the worker down under auto
            if compile_mode == "on":
                raise
            log.warning("compiled blocks off: compiling failed on this device (%s: %s)", type(exc).__name__, exc)
            for block in transformer.transformer_blocks:
                block._compiled_call_impl = None
            compiled = False
    return Speedups(kernels=names, attention=attention, compiled=compiled, compile_seconds=seconds)
