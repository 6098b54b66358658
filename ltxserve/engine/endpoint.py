"""The endpoint `fal-ai/ltx-video-13b-dev/image-to-video`: request → plan → image → two passes → mp4 → File."""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltxserve.config import Settings
from ltxserve.engine.cancel import cancel_between_blocks
from ltxserve.engine.contract import InputError, JobContext
from ltxserve.engine.cpu_preview import cpu_note, resize_frames, tiny_cpu_size
from ltxserve.engine.lora import LoraStore
from ltxserve.engine.lora import applied as lora_applied
from ltxserve.engine.media import fetch_image, prepare_conditioning_image, write_mp4
from ltxserve.engine.models import LTXComponents, load_components
from ltxserve.engine.pipeline import GenerationInputs, generate_frames
from ltxserve.engine.fp8 import fp8_matmul_supported
from ltxserve.engine.offload import apply_placement
from ltxserve.engine.placement import Placement
from ltxserve.engine.plan import LTXV_13B_097_DEV, PipelineConfig, output_size, plan_geometry, with_steps
from ltxserve.engine.safety_checker import SafetyGate
from ltxserve.engine.schema import ENDPOINT_ID, ImageToVideoInput, ImageToVideoOutput
from ltxserve.engine.speedups import install_speedups

log = logging.getLogger("ltxserve.engine")

TINY_WARNING = ("This server runs the TINY random-weight model (--model tiny, or --model auto on a machine without a "
                "CUDA GPU): outputs are noise. Serve on a CUDA machine with the 13B weights for real videos.")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.bfloat16}


def resolve_device_dtype(settings: Settings) -> tuple[torch.device, torch.dtype]:
    cuda = torch.cuda.is_available()
    device = torch.device(("cuda" if cuda else "cpu") if settings.device == "auto" else settings.device)
    if settings.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[settings.dtype]
    return device, dtype


def resolve_model(settings: Settings) -> str:
    """'auto' is the pinned 13B weights on a CUDA machine (pulled and verified on first start), 'tiny' elsewhere."""
    if settings.model != "auto":
        return settings.model
    if not torch.cuda.is_available():
        log.warning(TINY_WARNING)
        return "tiny"
    from ltxserve.weights.provision import ensure_weights

    return str(ensure_weights(settings, say=log.info))


def fp8_matmul_for(settings: Settings, device: torch.device) -> str:
    """fp8 tensor-core matmuls where the GPU has them, dequantized fp8 storage elsewhere (or as configured)."""
    if settings.fp8_matmul != "auto":
        return settings.fp8_matmul
    return "scaled_mm" if fp8_matmul_supported(device) else "dequant"


# Off the GPU there is no free memory to plan for: an explicit --memory mode is applied as asked (so the CPU can
# stand in for the GPU and run every placement's code), with what a 48 GB card would keep resident in offload mode.
_DEFAULT_RESIDENT = ("transformer", "latent_upsampler", "vae")


def choose_placement(settings: Settings, device: torch.device, *, tiny: bool) -> Placement:
    weights = "fp8" if settings.dtype == "fp8" else {torch.float32: "fp32", torch.float16: "fp16"}.get(
        resolve_device_dtype(settings)[1], "bf16")
    if device.type == "cuda" and not tiny:
        from ltxserve.engine.offload import plan_for_this_gpu

        return plan_for_this_gpu(settings.memory, settings.dtype, device_index=device.index or 0,
                                 fp8_matmul=fp8_matmul_for(settings, device))
    memory = "gpu" if settings.memory == "auto" else settings.memory
    return Placement(memory=memory, dtype=weights, vae_decode="full", peak_bytes=0, free_bytes=0,  # type: ignore[arg-type]
                     resident=_DEFAULT_RESIDENT if memory == "offload" else ())


@dataclass
class GeneratedVideo:
    frames: np.ndarray  # uint8 (frames, height, width, 3)
    seed: int
    prompt: str


class _NoContext:
    request_id = "offline"

    def log(self, message: str, level: str = "INFO") -> None:
        log.log(logging.WARNING if level in ("WARN", "ERROR") else logging.INFO, message)

    def progress(self, step: int, total: int, stage: str) -> None:
        pass

    def cancelled(self) -> bool:
        return False


class ImageToVideoEndpoint:
    endpoint_id = ENDPOINT_ID
    input_model = ImageToVideoInput

    def __init__(self, settings: Settings, components: LTXComponents | None = None,
                 config: PipelineConfig = LTXV_13B_097_DEV):
        self.settings = settings
        self.config = config
        self.offloader = None
        self.placement: Placement | None = None  # planned for this GPU; None: nothing to plan (CPU, tiny model)
        if components is None:
            components = self._load(settings)
        self.components = components
        # resolved now (missing weights stop the start); loaded on first use; on the GPU only if the plan has room
        self.safety, self.placement = SafetyGate.for_endpoint(settings, components.source, components.device,
                                                              components.dtype, self.placement)
        self.speedups = install_speedups(components, settings)  # kernels, attention backend, compiled blocks
        self.loras = LoraStore(settings)
        self.expander = self._prompt_expander(settings)  # expand_prompt: loads its models on first use

    def _load(self, settings: Settings) -> LTXComponents:
        """Choose the placement, load the weights to host memory in its format, then place them on the device."""
        device, dtype = resolve_device_dtype(settings)
        model = resolve_model(settings)
        placement = choose_placement(settings, device, tiny=model == "tiny")
        fp8 = fp8_matmul_for(settings, device) if placement.dtype == "fp8" else None
        log.info("memory placement: %s / %s%s on %s", placement.memory, placement.dtype,
                 f" (fp8 matmul: {fp8})" if fp8 else "", device)
        if placement.free_bytes:  # a plan made from this GPU's memory: every request is planned against it
            self.placement = placement
        components = load_components(model, device="cpu", dtype=dtype, fp8=fp8)
        self.offloader = apply_placement(components, placement, device)
        return components

    def _prompt_expander(self, settings: Settings):
        from ltxserve.engine.prompt_expansion import PromptExpander

        plan = None
        if self.placement is not None:  # a 13B placement on a GPU: the enhancer takes only what it leaves
            from ltxserve.engine.placement import count_model_sizes
            from ltxserve.engine.prompt_enhancer_plan import count_enhancer_sizes, plan_enhancer

            plan = plan_enhancer(self.placement, count_model_sizes(), count_enhancer_sizes())
        expander = PromptExpander(settings, tiny=self.components.is_tiny, device=self.components.device,
                                  dtype=self.components.dtype, plan=plan)
        if plan is not None and expander.weights_present():
            log.info("%s", plan.describe())
            self.placement = PromptExpander.reserve(self.placement, plan)
        return expander

    def generate(self, inp: ImageToVideoInput, ctx: JobContext | None = None, *, width: int | None = None,
                 height: int | None = None) -> GeneratedVideo:
        ctx = ctx or _NoContext()
        if inp.expand_prompt:
            self.expander.check()  # a 422 naming the weights to pull, before any work
        if self.components.is_tiny:
            ctx.log(TINY_WARNING, "WARN")
        seed = inp.seed if inp.seed is not None else random.SystemRandom().randrange(2**32)
        image = fetch_image(inp.image_url, self.settings)
        self.safety.check_input(image, inp.image_url, inp.enable_safety_checker, ctx)  # before any GPU work
        width, height = width or inp.width, height or inp.height
        if width is None or height is None:
            width, height = output_size(inp.resolution, inp.aspect_ratio, image.size)
        output = (width, height)
        if self.components.is_tiny and self.components.device.type == "cpu":  # see engine/cpu_preview.py
            work = tiny_cpu_size(width, height, inp.num_frames, self.config.downscale_factor)
            if work is not None:
                ctx.log(cpu_note(width, height, work), "WARN")
                width, height = work
        try:
            geometry = plan_geometry(width, height, inp.num_frames, self.config.downscale_factor)
            config = with_steps(self.config, inp.first_pass_num_inference_steps, inp.first_pass_skip_final_steps,
                                inp.second_pass_num_inference_steps, inp.second_pass_skip_initial_steps)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        ctx.log(f"{width}x{height}, {inp.num_frames} frames (model: {geometry.num_frames_padded} frames at "
                f"{geometry.first_pass_width}x{geometry.first_pass_height} then "
                f"{geometry.second_pass_width}x{geometry.second_pass_height}), seed {seed}")
        self._plan_memory(width, height, inp.num_frames, ctx)  # refuses (422) before any GPU work
        prompt = inp.prompt
        if inp.expand_prompt:  # caption the first frame, rewrite the prompt; off the GPU again before encoding
            prompt = self.expander.expand(inp.prompt, image, ctx, self.offloader)
        conditioning = prepare_conditioning_image(image, width, height, geometry.padding, inp.constant_rate_factor)
        adapters = []
        for i, lora in enumerate(inp.loras):
            adapter = self.loras.load(lora.path, lora.weight_name, self.components.transformer)
            adapters.append((adapter, lora.scale))
            ctx.log(f"LoRA {i}: {lora.path} ({len(adapter.layers)} layers, scale {lora.scale:g})")

        def on_step(step: int, total: int, stage: str) -> None:
            ctx.progress(step, total, stage)
            ctx.log(f"{stage} step {step}/{total}")

        # both passes; removed exactly afterwards; factors in the compute dtype on the execution device
        # cancel is checked between transformer blocks too, so it lands within a block's time
        with lora_applied(self.components.transformer, adapters, device=self.components.device,
                          dtype=self.components.dtype), \
                cancel_between_blocks(self.components.transformer, ctx.cancelled):
            frames = generate_frames(
                self.components, config,
                GenerationInputs(prompt=prompt, negative_prompt=inp.negative_prompt,
                                 conditioning_image=conditioning, geometry=geometry, frame_rate=inp.frame_rate,
                                 seed=seed),
                on_step=on_step, should_cancel=ctx.cancelled,
            )
        if (width, height) != output:
            frames = resize_frames(frames, *output)
        if inp.reverse_video:
            frames = frames[::-1]  # a view: write_mp4 makes each frame contiguous as it streams it
        self.safety.check_output(frames, inp.enable_safety_checker, ctx)  # a flagged video is never stored
        return GeneratedVideo(frames=frames, seed=seed, prompt=prompt)

    def run(self, inp: ImageToVideoInput, ctx: JobContext) -> ImageToVideoOutput:
        video = self.generate(inp, ctx)
        with tempfile.TemporaryDirectory(prefix="ltxserve-") as tmp:
            path = Path(tmp) / "output.mp4"
            write_mp4(video.frames, path, inp.frame_rate)
            file = ctx.save_file(path, "output.mp4", "video/mp4")
        return ImageToVideoOutput(video=file, prompt=video.prompt, seed=video.seed)

    def _plan_memory(self, width: int, height: int, num_frames: int, ctx: JobContext) -> None:
        """On a GPU: this request's memory plan under the server's placement (VAE tiling in space and time), or a
        422 naming the largest size that fits."""
        if self.placement is None:
            return
        from ltxserve.engine.memory_plan import RequestSize, apply_request_plan, plan_request
        from ltxserve.engine.placement import count_model_sizes

        plan = plan_request(count_model_sizes(), self.placement, RequestSize(width, height, num_frames))
        apply_request_plan(self.components.vae, plan)
        ctx.log(plan.describe())
