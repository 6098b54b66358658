"""The CPU newcomer's wait for the seed's example request (all defaults: 720p, 121 frames, 30+30 steps) on the tiny
model, before and after engine/cpu_preview.py, measured in one run on this machine.

    python benchmarks/cpu_first_run.py            # both: the full-size estimate, then the real request end to end
    python benchmarks/cpu_first_run.py --after    # only the real request (what `ltxserve generate` now does)

"Before" runs the default geometry as the pipeline did (1664x960 second pass, 24,960 tokens): an hour of CPU on 2
cores is too long to spend on a benchmark, so it times one transformer forward per pass at that size (batch 1) and the
full-size VAE decode, and multiplies by the forwards the guidance schedule asks for (sum of batch rows over the
steps). "After" runs the request through the endpoint, end to end, as `ltxserve generate --model tiny` does.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from ltxserve.config import Settings
from ltxserve.engine.models import build_tiny_components
from ltxserve.engine.pipeline import pixel_coords
from ltxserve.engine.plan import (
    LTXV_13B_097_DEV, VAE_SPATIAL_SCALE, guidance_schedule, pass_timesteps, plan_geometry,
)
from ltxserve.engine.schema import ImageToVideoInput

IMAGE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference" / "image_landscape.png"


class Clock:
    """Wall seconds and this process's CPU seconds (the CPU figure does not grow when other work shares the cores)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def forward_seconds(c, f: int, h: int, w: int) -> Clock:
    n = 1
    tokens = torch.randn(n, f * h * w, c.transformer.config.in_channels)
    text = torch.randn(n, 128, c.transformer.config.caption_channels)
    with torch.inference_mode(), Clock() as clock:
        c.transformer(hidden_states=tokens, encoder_hidden_states=text, timestep=torch.full((n, f * h * w), 500.0),
                      encoder_attention_mask=torch.ones(n, 128), video_coords=pixel_coords(f, h, w, 30, "cpu"),
                      return_dict=False)
    return clock


def rows(p) -> int:
    """Sample-forwards one pass asks for: each step runs 1-3 batch rows (cond / uncond / STG-perturbed)."""
    return sum(g.num_conds for g in guidance_schedule(p, pass_timesteps(p)))


def before() -> tuple[float, float]:
    c = build_tiny_components().to("cpu", torch.float32)
    g = plan_geometry(1280, 720, 121, LTXV_13B_097_DEV.downscale_factor)
    f = (g.num_frames_padded - 1) // 8 + 1
    wall = cpu = 0.0
    for name, p, w, h in (("pass 1", LTXV_13B_097_DEV.first_pass, g.first_pass_width, g.first_pass_height),
                          ("pass 2", LTXV_13B_097_DEV.second_pass, g.second_pass_width, g.second_pass_height)):
        one = forward_seconds(c, f, h // VAE_SPATIAL_SCALE, w // VAE_SPATIAL_SCALE)
        n = rows(p)
        wall, cpu = wall + one.wall * n, cpu + one.cpu * n
        print(f"before: {name} at {w}x{h}: one forward {one.wall:.1f} s wall / {one.cpu:.1f} s CPU, x {n} forwards")
    latents = torch.randn(1, 16, f, g.second_pass_height // VAE_SPATIAL_SCALE, g.second_pass_width // VAE_SPATIAL_SCALE)
    with torch.inference_mode(), Clock() as dec:
        c.vae.decode(latents, temb=torch.tensor([0.05]), return_dict=False)
    wall, cpu = wall + dec.wall, cpu + dec.cpu
    print(f"before: decode {dec.wall:.0f} s wall / {dec.cpu:.0f} s CPU; total (transformer and decode only) "
          f"{wall / 60:.0f} min wall / {cpu / 60:.0f} min CPU")
    return wall, cpu


def after() -> tuple[float, float]:
    from ltxserve.engine.endpoint import ImageToVideoEndpoint
    from ltxserve.engine.media import write_mp4
    from ltxserve.engine.offline import as_image_url

    with Clock() as clock:
        endpoint = ImageToVideoEndpoint(Settings(model="tiny", device="cpu"))
        inp = ImageToVideoInput(prompt="a cat walks on the grass", image_url=as_image_url(str(IMAGE)),
                                aspect_ratio="16:9")
        video = endpoint.generate(inp)
        write_mp4(video.frames, Path("/tmp/ltxserve-cpu-first-run.mp4"), inp.frame_rate)
    print(f"after: {video.frames.shape[2]}x{video.frames.shape[1]}x{video.frames.shape[0]} in {clock.wall:.0f} s wall / "
          f"{clock.cpu:.0f} s CPU (model build, both passes, decode, resize, mp4)")
    return clock.wall, clock.cpu


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--after", action="store_true", help="only the real request")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    b = None if args.after else before()
    a = after()
    if b is not None:
        print(f"ratio: {b[0] / a[0]:.0f}x wall, {b[1] / a[1]:.0f}x CPU")
