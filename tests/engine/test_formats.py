"""Every number format and memory placement a GPU server can choose, run end to end on the CPU.

The CPU stands in for the GPU: the endpoint is built as the server builds it (Settings → placement → load in the
chosen format → apply the placement on an execution device, here "cpu"), on the tiny checkpoint in the original file
layout, and generates through the same code a CUDA worker runs. For every dtype (fp32, bf16, fp8) x memory mode
(gpu, offload, sequential) x LoRA (none, one, two):
- the job completes with informative frames;
- a LoRA at scale 0 gives the frames of no LoRA, bit for bit; a LoRA at a real scale changes them, two more so;
- the memory mode does not change a single value (placement moves weights, never the maths);
- the formats stay close to fp32: bf16 and fp8 within the PSNR bounds stated below.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ltxserve.config import Settings
from ltxserve.engine.endpoint import ImageToVideoEndpoint
from ltxserve.engine.fp8 import Fp8Linear
from ltxserve.engine.schema import ImageToVideoInput
from tests.engine.frame_metrics import psnr

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "reference"
CHECKPOINT = FIXTURES / "checkpoint"
DTYPES = ("fp32", "bf16", "fp8")
MEMORY = ("gpu", "offload", "sequential")
LORA_CASES = ("none", "one", "one_at_zero", "two")

REQUEST = dict(prompt="A small dog runs through tall green grass.", negative_prompt="blurry", seed=7, num_frames=9,
               frame_rate=30, first_pass_num_inference_steps=6, first_pass_skip_final_steps=1,
               second_pass_num_inference_steps=6, second_pass_skip_initial_steps=3, constant_rate_factor=35)

# Measured on this tiny checkpoint (benchmarks/format_fidelity.py on the fixture cases): bf16 vs fp32 48-51 dB, fp8
# vs bf16 44.6-50 dB. Bounds with a ~6 dB margin; a format bug (wrong cast, wrong scale, transposed weights) lands
# far below 20 dB.
MIN_PSNR_BF16_VS_FP32 = 42.0
MIN_PSNR_FP8_VS_BF16 = 38.0


def _lora_file(folder: Path, name: str, seed: int, layout: str) -> None:
    """A rank-4 LoRA on attention and feed-forward Linears of a few blocks (incl. STG's block 28), random factors."""
    g = torch.Generator().manual_seed(seed)
    targets = {"transformer_blocks.0.attn1.to_q": (16, 16), "transformer_blocks.28.attn1.to_v": (16, 16),
               "transformer_blocks.10.ff.net.0.proj": (16, 64), "transformer_blocks.40.attn2.to_out.0": (16, 16)}
    tensors = {}
    for module, (fan_in, fan_out) in targets.items():
        down = torch.randn(4, fan_in, generator=g) * 0.5
        up = torch.randn(fan_out, 4, generator=g) * 0.5
        if layout == "peft":
            tensors[f"transformer.{module}.lora_A.weight"], tensors[f"transformer.{module}.lora_B.weight"] = down, up
        else:
            tensors[f"diffusion_model.{module}.lora_down.weight"] = down
            tensors[f"diffusion_model.{module}.lora_up.weight"] = up
            tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(8.0)
    save_file(tensors, folder / name)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    _lora_file(folder, "style.safetensors", 1, "comfy")
    _lora_file(folder, "motion.safetensors", 2, "peft")
    return folder


@pytest.fixture(scope="module")
def image_uri() -> str:
    return "data:image/png;base64," + base64.b64encode((FIXTURES / "image_landscape.png").read_bytes()).decode()


@pytest.fixture(scope="module")
def run(lora_dir, image_uri, tmp_path_factory):
    """frames(dtype, memory, lora_case), each combination generated once per module."""
    data = tmp_path_factory.mktemp("formats-data")

    @functools.lru_cache(maxsize=None)
    def endpoint(dtype: str, memory: str) -> ImageToVideoEndpoint:
        settings = Settings(model=str(CHECKPOINT), device="cpu", dtype=dtype, memory=memory, data_dir=data,
                            lora_dirs=[lora_dir], safety_checker="tiny")
        return ImageToVideoEndpoint(settings)

    loras = {
        "none": [],
        "one": [{"path": str(lora_dir / "style.safetensors"), "scale": 0.8}],
        "one_at_zero": [{"path": str(lora_dir / "style.safetensors"), "scale": 0.0}],
        "two": [{"path": str(lora_dir / "style.safetensors"), "scale": 0.8},
                {"path": str(lora_dir / "motion.safetensors"), "scale": 0.6}],
    }

    @functools.lru_cache(maxsize=None)
    def frames(dtype: str, memory: str, lora: str) -> np.ndarray:
        inp = ImageToVideoInput(image_url=image_uri, loras=loras[lora], **REQUEST)
        return np.asarray(endpoint(dtype, memory).generate(inp, width=96, height=64).frames)

    frames.endpoint = endpoint  # type: ignore[attr-defined]
    return frames


@pytest.mark.parametrize("memory", MEMORY)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_format_and_placement_generates_and_loras_behave(run, dtype, memory):
    none = run(dtype, memory, "none")
    assert none.shape == (9, 64, 96, 3) and none.dtype == np.uint8
    assert none.std() > 10 and np.abs(np.diff(none.astype(np.float64), axis=0)).mean() > 1

    np.testing.assert_array_equal(run(dtype, memory, "one_at_zero"), none)  # scale 0 == no LoRA, bit for bit
    one, two = run(dtype, memory, "one"), run(dtype, memory, "two")
    assert np.abs(one.astype(np.int16) - none).mean() > 1.0, "the LoRA changed nothing"
    assert np.abs(two.astype(np.int16) - one).mean() > 1.0, "the second LoRA changed nothing"


@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_mode_changes_no_value(run, dtype):
    for lora in ("none", "two"):
        reference = run(dtype, "gpu", lora)
        for memory in ("offload", "sequential"):
            np.testing.assert_array_equal(run(dtype, memory, lora), reference, err_msg=f"{dtype}/{memory}/{lora}")


def test_reduced_precision_stays_close(run):
    fp32, bf16, fp8 = (run(d, "gpu", "two") for d in DTYPES)
    assert psnr(bf16, fp32) >= MIN_PSNR_BF16_VS_FP32, psnr(bf16, fp32)
    assert psnr(fp8, bf16) >= MIN_PSNR_FP8_VS_BF16, psnr(fp8, bf16)
    assert not np.array_equal(fp8, bf16), "fp8 computed exactly as bf16: the weights were not quantized"


def test_the_formats_hold_what_they_say(run):
    fp32, bf16, fp8 = (run.endpoint(d, "gpu") for d in DTYPES)
    assert fp32.components.transformer.proj_out.weight.dtype == torch.float32
    for endpoint in (bf16, fp8):
        c = endpoint.components
        assert c.dtype == torch.bfloat16 and c.vae.decoder.conv_in.conv.weight.dtype == torch.bfloat16
        assert next(c.text_encoder.parameters()).dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in c.latent_upsampler.parameters()), "the upsampler stays fp32"
    layers = [m for m in fp8.components.transformer.modules() if isinstance(m, Fp8Linear)]
    assert len(layers) == 48 * 10  # q, k, v, out of both attentions and the two feed-forward projections, per block
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in layers)
    kept = fp8.components.transformer
    assert kept.proj_in.weight.dtype == kept.proj_out.weight.dtype == torch.bfloat16  # embeddings, proj_out: bf16
    assert kept.time_embed.linear.weight.dtype == torch.bfloat16


def test_offload_keeps_residents_and_sends_the_text_encoder_home(run):
    endpoint = run.endpoint("bf16", "offload")
    run("bf16", "offload", "none")
    offloader = endpoint.offloader
    assert offloader.resident == ("transformer", "latent_upsampler", "vae")
    visits = [m for m in offloader.moves if m[0] == "text_encoder"]
    assert visits[:2] == [("text_encoder", "device"), ("text_encoder", "host")], offloader.moves
    assert not any(name in offloader.resident and where == "host" for name, where in offloader.moves)


def test_sequential_hooks_every_component_that_runs(run):
    from diffusers.hooks import HookRegistry

    endpoint = run.endpoint("bf16", "sequential")
    c = endpoint.components
    for module in (c.transformer, c.text_encoder.encoder, c.vae.encoder, c.vae.decoder):
        registry = getattr(module, "_diffusers_hook", None)
        assert isinstance(registry, HookRegistry) and registry.hooks, f"{type(module).__name__} is not offloaded"
