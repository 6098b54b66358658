"""Triton kernels for the LTX transformer's memory-bound hot paths, each module beside its PyTorch reference.

- rmsnorm_modulate: RMSNorm (no affine, fp32 statistics) fused with adaLN's x * (1 + scale) + shift, the scale and
  shift constant over each segment of tokens (ltxserve/engine/segmented.py's `_modulate` after `norm1`/`norm2`).
- gate_residual: base + x * gate with the gate constant per segment (segmented.py's `_gated_add`).
- rope_qk: LTXAttention's q/k RMSNorm across heads (with weight) and the interleaved RoPE rotation in fp32, for q
  and k in one pass over the cos/sin tables.

CUDA tensors run the compiled kernels; CPU tensors run the same kernels through Triton's interpreter (what
TRITON_INTERPRET=1 selects), so the kernels are tested, and the engine can run on them, without a GPU.
"""

from __future__ import annotations

import importlib.util

KERNEL_NAMES = ("rmsnorm_modulate", "rope_qk", "gate_residual")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None
