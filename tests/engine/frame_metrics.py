"""Distances between uint8 frame stacks, shared by the fidelity and format tests."""

from __future__ import annotations

import math

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over uint8 values (peak 255); inf for identical arrays."""
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
