"""The tiny model on a CPU: a newcomer's first request finishes in about two minutes instead of about an hour.

Measured on 2 cores (torch profiler, see the README): at the hosted defaults (1280x720, 121 frames, 30+30 steps) the
random-weight model's time goes to self-attention over the second pass's 24,960 tokens in 48 blocks (quadratic in the
tokens), then the first pass's 6,240. The tiny model only shows that the system works (its output is noise), so on a
CPU it runs the same pipeline, the same steps and the same 48 blocks at a smaller size with the request's aspect and
frame count, and the frames are resized to the requested size. Requests that already fit (every test's) and
everything on real weights or on a GPU run exactly as asked.
"""

from __future__ import annotations

import numpy as np

from ltxserve.engine.plan import VAE_SPATIAL_SCALE, VAE_TEMPORAL_SCALE, pad_frames, plan_geometry

# Second-pass latent tokens the tiny model runs on a CPU: 16x fewer than the 720p default, ~1 s per step on 2 cores.
TINY_CPU_TOKEN_BUDGET = 1560


def second_pass_tokens(width: int, height: int, num_frames: int, downscale_factor: float) -> int:
    g = plan_geometry(width, height, num_frames, downscale_factor)
    frames = (pad_frames(num_frames) - 1) // VAE_TEMPORAL_SCALE + 1
    return (g.second_pass_width // VAE_SPATIAL_SCALE) * (g.second_pass_height // VAE_SPATIAL_SCALE) * frames


def tiny_cpu_size(width: int, height: int, num_frames: int, downscale_factor: float,
                  budget: int = TINY_CPU_TOKEN_BUDGET) -> tuple[int, int] | None:
    """A size with the request's aspect whose second pass fits `budget` tokens, or None when the request fits."""
    if second_pass_tokens(width, height, num_frames, downscale_factor) <= budget:
        return None
    for divisor in range(2, 64):
        w, h = max(VAE_SPATIAL_SCALE * 2, round(width / divisor)), max(VAE_SPATIAL_SCALE * 2, round(height / divisor))
        try:
            if second_pass_tokens(w, h, num_frames, downscale_factor) <= budget:
                return w, h
        except ValueError:  # too small for a first pass: the previous divisor was the last that worked
            break
    return None


def resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (F, h, w, 3) -> uint8 (F, height, width, 3), bilinear, a few frames at a time."""
    import torch
    import torch.nn.functional as F

    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for start in range(0, frames.shape[0], 16):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start:start + 16])).permute(0, 3, 1, 2).float()
        resized = F.interpolate(chunk, size=(height, width), mode="bilinear", align_corners=False)
        out[start:start + 16] = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def cpu_note(width: int, height: int, work: tuple[int, int]) -> str:
    return (f"tiny model on a CPU: generating at {work[0]}x{work[1]} and resizing to {width}x{height} (its output is "
            "noise either way); the default request takes about two minutes on 2 cores this way, about an hour at full "
            "size. Real videos need a CUDA GPU and the 13B weights.")
