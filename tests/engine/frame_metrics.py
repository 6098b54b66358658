"""Distances between uint8 video frames, shared by the fidelity tests."""

from __future__ import annotations

import math

import numpy as np

PEAK = 255.0


def psnr(actual: np.ndarray, expected: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all values of two uint8 arrays of one shape (peak 255).

    Returns inf for identical arrays. Computed in float64 so that uint8 wrap-around cannot occur.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.dtype != np.uint8 or expected.dtype != np.uint8:
        raise TypeError(f"psnr expects uint8 frames, got {actual.dtype} and {expected.dtype}")
    if actual.shape != expected.shape:
        raise ValueError(f"psnr needs equal shapes, got {actual.shape} and {expected.shape}")
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK * PEAK / mse)
