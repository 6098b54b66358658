"""Where the prompt enhancer computes, decided from the memory plan of the 13B model (pure; no torch at import).

The enhancer (Llama 3.2 3B + Florence-2-large, ~8 GB in bf16) runs once per `expand_prompt` request, before the
prompt is encoded. It never takes memory the 13B model's placement counted on (the reference's enhancer does, and
runs out of memory beside the 13B model on 48 GB cards: LTX-Video #162). Its placement is chosen *after* the model's,
from what that placement leaves:

- ``gpu``:   resident on the GPU for the whole job, when the model's planned peak plus the enhancer's weights fit
             the free memory (every request is then planned with that much less free memory);
- ``visit``: kept in host memory and moved onto the GPU only for the expansion, when the components resident at
             that moment plus the enhancer (weights, activations, headroom) fit; it leaves before the text encoder
             runs, so the denoising stages see exactly the memory they were planned with;
- ``cpu``:   computed on the CPU (slow: tens of seconds to minutes per request) when neither fits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ltxserve.engine.memory_plan import HEADROOM_FIXED_BYTES, GiB, ModelSizes, weight_bytes

if TYPE_CHECKING:
    from ltxserve.engine.placement import Placement

EnhancerRun = Literal["gpu", "visit", "cpu"]
CONFIG_DIR = Path(__file__).resolve().parent.parent / "weights" / "configs"

# Activations at the enhancer's peak, an upper estimate: Llama 3.2 3B's KV cache is 112 KiB per token (28 layers x
# 8 KV heads x 128 x 2 x bf16), so ~0.2 GiB for a 1.5k-token conversation; Florence-2's three beams over 577 image
# tokens + 1024 caption tokens and DaViT's 768x768 stages stay under ~0.5 GiB; prefill logits are for the last token.
ENHANCER_ACTIVATION_BYTES = 1 * GiB
BF16 = 2


@dataclass(frozen=True)
class EnhancerSizes:
    captioner_params: int
    llm_params: int

    def weight_bytes(self, bytes_per_param: int = BF16) -> int:
        return bytes_per_param * (self.captioner_params + self.llm_params)


@dataclass(frozen=True)
class EnhancerPlan:
    run: EnhancerRun
    weight_bytes: int
    need_bytes: int  # GPU bytes while it runs: weights + activations + headroom
    reason: str

    def describe(self) -> str:
        where = {"gpu": "resident on the GPU", "visit": "moved onto the GPU only while it runs",
                 "cpu": "on the CPU (slow)"}[self.run]
        return f"prompt enhancer ({self.weight_bytes / GiB:.1f} GiB bf16): {where}; {self.reason}"


def _load(name: str) -> dict:
    raw = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


@lru_cache(maxsize=1)
def count_enhancer_sizes() -> EnhancerSizes:
    """Parameters of the real captioner and LLM, counted on the meta device from their configurations."""
    import torch
    from transformers import (BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2VisionConfig,
                              LlamaConfig, LlamaForCausalLM)

    cap = _load("prompt_captioner")
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**_load("prompt_llm")))
        captioner = Florence2ForConditionalGeneration(Florence2Config(
            vision_config=Florence2VisionConfig(**cap["vision_config"]), text_config=BartConfig(**cap["text_config"]),
            image_token_id=cap["image_token_id"]))
    return EnhancerSizes(captioner_params=sum(p.numel() for p in captioner.parameters()),
                         llm_params=sum(p.numel() for p in llm.parameters()))


def plan_enhancer(placement: "Placement", sizes: ModelSizes, enhancer: EnhancerSizes) -> EnhancerPlan:
    """The enhancer's placement beside the 13B model's `placement` (planned for `placement.free_bytes`)."""
    weights = enhancer.weight_bytes()
    need = weights + ENHANCER_ACTIVATION_BYTES + HEADROOM_FIXED_BYTES
    free = placement.free_bytes
    if placement.memory == "gpu" and placement.peak_bytes + weights <= free:
        return EnhancerPlan("gpu", weights, need, f"the model's peak {placement.peak_bytes / GiB:.1f} GiB + "
                            f"{weights / GiB:.1f} GiB fit in {free / GiB:.1f} GiB free")
    # At its turn (before the text encoder) the GPU holds the resident components only: a visitor from the previous
    # job is sent home first, and in sequential mode the streamed weights are in host memory between their calls.
    w = weight_bytes(sizes, placement.dtype)
    resident = sum(w.of(c) for c in (placement.resident or ()))
    if resident + need <= free:
        return EnhancerPlan("visit", weights, need, f"{resident / GiB:.1f} GiB resident + {need / GiB:.1f} GiB "
                            f"fit in {free / GiB:.1f} GiB free; it leaves before the text encoder runs")
    return EnhancerPlan("cpu", weights, need, f"{resident / GiB:.1f} GiB resident + {need / GiB:.1f} GiB do not fit "
                        f"in {free / GiB:.1f} GiB free")
