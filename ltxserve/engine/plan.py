"""Pure planning: sizes, frame counts, timestep schedules and per-step guidance, as the reference computes them.

No torch here: every function is a small table-tested computation (tests/engine/test_plan.py). Names follow
Lightricks' LTX-Video (configs/ltxv-13b-0.9.7-dev.yaml, inference.py, pipelines/pipeline_ltx_video.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

VAE_SPATIAL_SCALE = 32
VAE_TEMPORAL_SCALE = 8


@dataclass(frozen=True)
class PassConfig:
    num_inference_steps: int
    skip_initial_inference_steps: int
    skip_final_inference_steps: int
    guidance_scale: tuple[float, ...]
    stg_scale: tuple[float, ...]
    rescaling_scale: tuple[float, ...]
    guidance_timesteps: tuple[float, ...]
    skip_block_list: tuple[tuple[int, ...], ...]
    cfg_star_rescale: bool


@dataclass(frozen=True)
class PipelineConfig:
    downscale_factor: float
    stg_mode: str
    decode_timestep: float
    decode_noise_scale: float
    image_cond_noise_scale: float
    first_pass: PassConfig
    second_pass: PassConfig


# configs/ltxv-13b-0.9.7-dev.yaml as of Lightricks/LTX-Video 832e043 (the hosted endpoint's defaults), with
# inference.py's image_cond_noise_scale.
LTXV_13B_097_DEV = PipelineConfig(
    downscale_factor=0.6666666,
    stg_mode="attention_values",
    decode_timestep=0.05,
    decode_noise_scale=0.025,
    image_cond_noise_scale=0.15,
    first_pass=PassConfig(
        num_inference_steps=30,
        skip_initial_inference_steps=0,
        skip_final_inference_steps=3,
        guidance_scale=(1, 1, 6, 8, 6, 1, 1),
        stg_scale=(0, 0, 4, 4, 4, 2, 1),
        rescaling_scale=(1, 1, 0.5, 0.5, 1, 1, 1),
        guidance_timesteps=(1.0, 0.996, 0.9933, 0.9850, 0.9767, 0.9008, 0.6180),
        skip_block_list=((), (11, 25, 35, 39), (22, 35, 39), (28,), (28,), (28,), (28,)),
        cfg_star_rescale=True,
    ),
    second_pass=PassConfig(
        num_inference_steps=30,
        skip_initial_inference_steps=17,
        skip_final_inference_steps=0,
        guidance_scale=(1,),
        stg_scale=(1,),
        rescaling_scale=(1,),
        guidance_timesteps=(1.0,),
        skip_block_list=((27,),),
        cfg_star_rescale=True,
    ),
)


def with_steps(config: PipelineConfig, first_pass_num_inference_steps: int, first_pass_skip_final_steps: int,
               second_pass_num_inference_steps: int, second_pass_skip_initial_steps: int) -> PipelineConfig:
    """The configuration with a request's step counts (the hosted endpoint's four step fields)."""
    first = replace(config.first_pass, num_inference_steps=first_pass_num_inference_steps,
                    skip_final_inference_steps=first_pass_skip_final_steps)
    second = replace(config.second_pass, num_inference_steps=second_pass_num_inference_steps,
                     skip_initial_inference_steps=second_pass_skip_initial_steps)
    for p in (first, second):
        check_skips(p.num_inference_steps, p.skip_initial_inference_steps, p.skip_final_inference_steps)
    return replace(config, first_pass=first, second_pass=second)


# --- sizes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    width: int
    height: int
    num_frames: int
    width_padded: int
    height_padded: int
    num_frames_padded: int
    padding: tuple[int, int, int, int]  # (left, right, top, bottom), as F.pad takes it
    first_pass_width: int
    first_pass_height: int
    second_pass_width: int
    second_pass_height: int

    def latent_shape(self, width: int, height: int, channels: int) -> tuple[int, int, int, int, int]:
        frames = (self.num_frames_padded - 1) // VAE_TEMPORAL_SCALE + 1
        return (1, channels, frames, height // VAE_SPATIAL_SCALE, width // VAE_SPATIAL_SCALE)


def pad_up(value: int, multiple: int = VAE_SPATIAL_SCALE) -> int:
    return ((value - 1) // multiple + 1) * multiple


def pad_frames(num_frames: int) -> int:
    """To the next 8k+1 (inference.py: ((N - 2) // 8 + 1) * 8 + 1)."""
    return ((num_frames - 2) // VAE_TEMPORAL_SCALE + 1) * VAE_TEMPORAL_SCALE + 1


def calculate_padding(height: int, width: int, height_padded: int, width_padded: int) -> tuple[int, int, int, int]:
    pad_height, pad_width = height_padded - height, width_padded - width
    top, left = pad_height // 2, pad_width // 2
    return (left, pad_width - left, top, pad_height - top)


def downscaled(side: int, factor: float) -> int:
    """LTXMultiScalePipeline: int(side * factor) rounded down to a multiple of 32."""
    x = int(side * factor)
    return x - (x % VAE_SPATIAL_SCALE)


def plan_geometry(width: int, height: int, num_frames: int, downscale_factor: float) -> Geometry:
    width_padded, height_padded = pad_up(width), pad_up(height)
    w1, h1 = downscaled(width_padded, downscale_factor), downscaled(height_padded, downscale_factor)
    if w1 <= 0 or h1 <= 0:
        raise ValueError(f"{width}x{height} is too small for a first pass at {downscale_factor:g} of the size")
    return Geometry(
        width=width, height=height, num_frames=num_frames,
        width_padded=width_padded, height_padded=height_padded, num_frames_padded=pad_frames(num_frames),
        padding=calculate_padding(height, width, height_padded, width_padded),
        first_pass_width=w1, first_pass_height=h1, second_pass_width=2 * w1, second_pass_height=2 * h1,
    )


RESOLUTIONS = {
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (720, 720)},
    "480p": {"16:9": (848, 480), "9:16": (480, 848), "1:1": (480, 480)},
}


def output_size(resolution: str, aspect_ratio: str, image_size: tuple[int, int]) -> tuple[int, int]:
    """Output (width, height). 'auto' picks the aspect nearest the image's, compared on a log scale (so 4:3 and
    3:4 are equally far from 1:1), ties going to 1:1."""
    table = RESOLUTIONS[resolution]
    if aspect_ratio != "auto":
        return table[aspect_ratio]
    w, h = image_size
    target = math.log(w / h)
    order = ("1:1", "16:9", "9:16")
    best = min(order, key=lambda a: abs(math.log(table[a][0] / table[a][1]) - target))
    return table[best]


# --- timesteps and guidance -------------------------------------------------------------------------------------


def check_skips(num_inference_steps: int, skip_initial: int, skip_final: int) -> None:
    if skip_initial < 0 or skip_final < 0 or skip_initial + skip_final >= num_inference_steps:
        raise ValueError(
            f"invalid skip values: skip_initial ({skip_initial}) + skip_final ({skip_final}) must be less than "
            f"the number of inference steps ({num_inference_steps})"
        )


def linear_quadratic_schedule(num_steps: int, threshold_noise: float = 0.025,
                              linear_steps: int | None = None) -> np.ndarray:
    """Timesteps t = 1 - sigma, linear in sigma up to threshold_noise, then quadratic to 1 (float32, as the
    reference stores them in a torch tensor)."""
    if num_steps == 1:
        return np.array([1.0], dtype=np.float32)
    if linear_steps is None:
        linear_steps = num_steps // 2
    linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    step_diff = linear_steps - threshold_noise * num_steps
    quadratic_steps = num_steps - linear_steps
    quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
    linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
    const = quadratic_coef * (linear_steps**2)
    quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, num_steps)]
    sigmas = linear + quadratic
    return np.array([1.0 - s for s in sigmas], dtype=np.float32)


def pass_timesteps(p: PassConfig) -> np.ndarray:
    """The pass's timesteps: the schedule with skip_initial/skip_final sliced off. The step after the last one
    goes to 0, so skipping final steps replaces them with one larger step, not noisy output."""
    check_skips(p.num_inference_steps, p.skip_initial_inference_steps, p.skip_final_inference_steps)
    full = linear_quadratic_schedule(p.num_inference_steps)
    return full[p.skip_initial_inference_steps: len(full) - p.skip_final_inference_steps]


@dataclass(frozen=True)
class StepGuidance:
    timestep: float
    guidance_scale: float
    stg_scale: float
    rescaling_scale: float
    skip_block_list: tuple[int, ...]

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def do_stg(self) -> bool:
        return self.stg_scale > 0

    @property
    def do_rescaling(self) -> bool:
        return self.rescaling_scale != 1.0

    @property
    def num_conds(self) -> int:
        return 1 + int(self.do_cfg) + int(self.do_stg)


def guidance_schedule(p: PassConfig, timesteps: np.ndarray) -> list[StepGuidance]:
    """Each step takes the first guidance_timesteps entry <= t (else the last), compared in float32 as the
    reference compares a float32 tensor with Python floats."""
    # torch compares a float32 tensor with a Python float in float32: the 0.985 tie of the 13B table resolves so.
    thresholds = np.asarray(p.guidance_timesteps, dtype=np.float32)
    out = []
    for t in timesteps:
        t32 = np.float32(t)
        idx = next((i for i, v in enumerate(thresholds) if v <= t32), len(thresholds) - 1)
        blocks = p.skip_block_list[min(idx, len(p.skip_block_list) - 1)]
        out.append(StepGuidance(timestep=float(t32), guidance_scale=float(p.guidance_scale[idx]),
                                stg_scale=float(p.stg_scale[idx]), rescaling_scale=float(p.rescaling_scale[idx]),
                                skip_block_list=tuple(blocks)))
    return out
