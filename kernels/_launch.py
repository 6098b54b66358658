"""One Triton kernel, compiled for CUDA tensors and interpreted for CPU tensors (no environment switch)."""

from __future__ import annotations

from typing import Callable

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction


class DeviceKernel:
    """`kernel.on(tensor)[grid](...)`: the compiled kernel for CUDA tensors, the interpreted one for CPU tensors."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self._compiled = None
        self._interpreted = None

    def on(self, tensor: torch.Tensor):
        if tensor.device.type == "cpu":
            if self._interpreted is None:
                self._interpreted = InterpretedFunction(self.fn)
            return self._interpreted
        if self._compiled is None:
            self._compiled = triton.jit(self.fn)
        return self._compiled


def device_kernel(fn: Callable) -> DeviceKernel:
    return DeviceKernel(fn)


MAX_SEGMENTS = 4  # token segments per call a kernel resolves in-register (the engine uses at most 2)


def segment_bounds(segments, n_tokens: int, n_values: int) -> tuple[int, int, int]:
    """The interior boundaries of `segments` (host ints, 0 = first, last = n_tokens) padded with n_tokens."""
    segments = tuple(int(s) for s in segments)
    if len(segments) < 2 or segments[0] != 0 or segments[-1] != n_tokens:
        raise ValueError(f"segments {segments} must run from 0 to {n_tokens}")
    if any(a > b for a, b in zip(segments[:-1], segments[1:])):
        raise ValueError(f"segments {segments} must not decrease")
    if len(segments) - 1 != n_values:
        raise ValueError(f"{len(segments) - 1} segments but {n_values} values per row")
    if len(segments) - 1 > MAX_SEGMENTS:
        raise ValueError(f"at most {MAX_SEGMENTS} segments, got {len(segments) - 1}")
    inner = list(segments[1:-1]) + [n_tokens] * (MAX_SEGMENTS - len(segments) + 1)
    return inner[0], inner[1], inner[2]


def check_3d(name: str, t: torch.Tensor) -> None:
    if t.ndim != 3:
        raise ValueError(f"{name} must be (batch, tokens, dim), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")


def _promote(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
