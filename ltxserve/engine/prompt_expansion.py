"""The endpoint's side of `expand_prompt`: which enhancer folder, where it computes, and the job log.

The enhancer's weights are optional (lock components `prompt_captioner` and `prompt_llm`, ~8 GB, pulled only when
asked for): the server starts without them, and a request with `expand_prompt: true` is then refused with a 422 on
`expand_prompt` that names the command to run. `--model tiny` uses tiny random-weight models, built once under the
data folder, through the same loaders.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from ltxserve.config import Settings
from ltxserve.engine.contract import EndpointError, InputError, JobCancelled, JobContext
from ltxserve.engine.placement import Placement
from ltxserve.engine.prompt_enhancer import EnhancerUnavailable, PromptEnhancer, check_enhancer_folder
from ltxserve.engine.prompt_enhancer_plan import EnhancerPlan, EnhancerRun
from ltxserve.protocol import ErrorType

log = logging.getLogger("ltxserve.engine")

PROMPT_ENHANCER_DIR = "prompt_enhancer"  # inside the weights folder: the lock's dests put both models here
LOC = ("body", "expand_prompt")
# Beyond the weight files' size while they load (tokenizers, the processor, allocator slack).
HOST_MARGIN_BYTES = 1 << 30


def available_host_bytes() -> int | None:
    """MemAvailable (Linux): what this process can still allocate without swapping or meeting the OOM killer."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_host_memory(folder: Path, available: int | None) -> None:
    """Refuse to load the enhancer into host memory that is not there: the 13B model's host copies (offloaded
    placements) and T5 already live in it, and the OOM killer would end the worker and every job after it."""
    need = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) + HOST_MARGIN_BYTES
    if available is not None and available < need:
        raise EndpointError(
            f"expand_prompt: the prompt enhancer needs about {need / 2**30:.1f} GiB of host memory to load and "
            f"{available / 2**30:.1f} GiB is available on this server; send the request without expand_prompt, or "
            "run the server on a machine with more RAM (`ltxserve doctor` shows the budget)",
            error_type=ErrorType.RUNNER_SCHEDULING_FAILURE.value, status_code=503)


def enhancer_folder(settings: Settings, tiny: bool) -> Path:
    if tiny:
        from ltxserve.engine.prompt_enhancer_tiny import ensure_tiny_prompt_enhancer

        return ensure_tiny_prompt_enhancer(Path(settings.data_dir) / "cache")
    return Path(settings.prompt_enhancer_dir or Path(settings.weights_dir) / PROMPT_ENHANCER_DIR)


class PromptExpander:
    """Owns the PromptEnhancer of one endpoint (loaded on the first request that asks) and its placement."""

    def __init__(self, settings: Settings, *, tiny: bool, device: torch.device, dtype: torch.dtype,
                 plan: EnhancerPlan | None = None):
        self.settings = settings
        self.tiny = tiny
        self.device = device
        # bf16 for the real models off the GPU too (fp32 would hold 16 GB of host memory for them)
        self.dtype = dtype if tiny or dtype != torch.float32 else torch.bfloat16
        self.plan = plan
        self.run_on: EnhancerRun = plan.run if plan else ("cpu" if device.type == "cpu" else "visit")
        self.enhancer: PromptEnhancer | None = None
        self._copies = None

    @staticmethod
    def reserve(placement: Placement, plan: EnhancerPlan) -> Placement:
        """The placement every request is planned with: less free memory when the enhancer stays resident."""
        if plan.run != "gpu":
            return placement
        return replace(placement, free_bytes=placement.free_bytes - plan.weight_bytes)

    def weights_present(self) -> bool:
        try:
            check_enhancer_folder(enhancer_folder(self.settings, self.tiny))
            return True
        except EnhancerUnavailable:
            return False

    def _enhancer(self) -> PromptEnhancer:
        if self.enhancer is None:
            folder = enhancer_folder(self.settings, self.tiny)
            check_enhancer_folder(folder)
            self.enhancer = PromptEnhancer(folder, dtype=self.dtype,
                                           caption_tokens=self.settings.prompt_enhancer_caption_tokens,
                                           max_tokens=self.settings.prompt_enhancer_max_tokens)
        return self.enhancer

    def check(self) -> None:
        """Refuse (422 on expand_prompt) before any work when the weights are not there."""
        try:
            self._enhancer()
        except EnhancerUnavailable as exc:
            raise InputError(str(exc), loc=LOC, type="prompt_enhancer_unavailable") from None

    def _load(self, ctx: JobContext) -> PromptEnhancer:
        enhancer = self._enhancer()
        if not enhancer.loaded:
            check_host_memory(enhancer_folder(self.settings, self.tiny), available_host_bytes())
            started = time.perf_counter()
            try:
                enhancer.load()
            except EnhancerUnavailable as exc:
                raise InputError(str(exc), loc=LOC, type="prompt_enhancer_unavailable") from None
            if self.run_on == "gpu":
                for module in enhancer.modules():
                    module.to(self.device)
            elif self.run_on == "visit":
                from ltxserve.engine.offload import HostCopies

                self._copies = [HostCopies(m, self.device) for m in enhancer.modules()]
            ctx.log(f"prompt enhancer loaded in {time.perf_counter() - started:.1f} s "
                    f"({self.plan.describe() if self.plan else 'runs on ' + self.run_on})")
        return enhancer

    def expand(self, prompt: str, image, ctx: JobContext, offloader=None) -> str:
        """The expanded prompt for `prompt` and the first frame `image`; caption and expansion go to the job log."""
        enhancer = self._load(ctx)
        device = torch.device("cpu") if self.run_on == "cpu" else self.device
        started = time.perf_counter()
        if self.run_on == "visit":
            if offloader is not None:
                offloader.release()  # the previous job's visitor (e.g. the VAE) goes home first
            for copies in self._copies or ():
                copies.to_device()
        try:
            result = enhancer.expand(prompt, image, device, should_stop=ctx.cancelled)
        finally:
            if self.run_on == "visit":
                for copies in self._copies or ():
                    copies.to_host()  # frees the enhancer's device memory before the text encoder and denoising
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if ctx.cancelled():
            raise JobCancelled()
        ctx.log(f"prompt enhancer: image caption: {result.caption}")
        if result.rewritten:
            ctx.log(f"prompt enhancer: expanded prompt: {result.prompt}")
        else:
            ctx.log("prompt enhancer: the language model gave no text; using the prompt as given", "WARN")
        ctx.log(f"prompt enhancer: {time.perf_counter() - started:.1f} s on {device.type}")
        return result.prompt
