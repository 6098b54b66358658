"""What the safety checker adds to a request, against one denoising step of the transformer, measured in one run.

A request with enable_safety_checker (the default) runs the checker on the input image and on N sampled output frames
(one batch). This prints, on the CPU (fp32, this machine's threads):

1. the tiny checker (--model tiny) on a 1280x720 input and N 1280x720 frames, against one pass-1 step (batch 3:
   CFG + STG) of the tiny transformer at the geometry the tiny model runs on the CPU (engine/cpu_preview.py: the
   default request shrunk to its token budget) and at the request's own (6,240 tokens);
2. the full-size checker (ViT-base/16 at 224 px, 85.8M parameters, random weights: the real cost) on the same images,
   against one pass-1 step of the 13B transformer. The 13B step is too slow to run here whole, so a 1-block model of
   the real widths runs at a reduced token count; its measured FLOP rate times the FLOPs of the full step
   (ltxserve/engine/flops.py) estimates the step on this CPU. The FLOP ratio is printed too: the same comparison on a
   GPU, where both run at similar efficiency (the checker's batch of 224-px images is small for a GPU, so there the
   real ratio is somewhat worse than the FLOP ratio; still far below one step).

    python benchmarks/safety_checker.py [--frames 8] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ltxserve.engine import flops as fl  # noqa: E402
from ltxserve.engine.cpu_preview import tiny_cpu_size  # noqa: E402
from ltxserve.engine.models import TINY_TRANSFORMER  # noqa: E402
from ltxserve.engine.plan import LTXV_13B_097_DEV, plan_geometry  # noqa: E402
from ltxserve.engine.safety_checker import (  # noqa: E402
    CONFIG_PATH,
    SafetyChecker,
    _processor_class,
    tiny_safety_checker_folder,
)

WIDTH, HEIGHT, FRAMES = 1280, 720, 121  # the hosted defaults
PASS1_TOKENS = 16 * 15 * 26  # 832x480 latents x 16 latent frames
PASS1_BATCH = 3


def best_of(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def checker_request(checker: SafetyChecker, image: np.ndarray, video: np.ndarray) -> None:
    checker.check_image(image)
    checker.check_frames(video)


def full_size_checker(frames: int) -> SafetyChecker:
    from transformers import ViTConfig, ViTForImageClassification

    raw = {k: v for k, v in json.loads(CONFIG_PATH.read_text()).items() if not k.startswith("_")}
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**raw)).eval().requires_grad_(False)
    processor = _processor_class()(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return SafetyChecker(model, processor, frames=frames)


def vit_flops(images: int, hidden: int = 768, layers: int = 12, mlp: int = 3072, tokens: int = 197) -> float:
    """Multiply-adds x 2 of ViT-base on `images` 224-px images (patch embedding, q/k/v/out, attention, MLP)."""
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * mlp) + 2 * 2 * tokens * tokens * hidden
    return images * (2 * 196 * 768 * hidden + layers * per_layer)


def transformer_step(cfg: dict, batch: int, tokens: int, frames: int, height: int, width: int):
    """A closure running one forward of a transformer built from `cfg` (random weights) on `tokens` latent tokens."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    model = LTXVideoTransformer3DModel(**cfg).eval().requires_grad_(False)
    x = torch.randn(batch, tokens, cfg["in_channels"])
    text = torch.randn(batch, fl.TEXT_TOKENS, cfg["caption_channels"])
    mask = torch.ones(batch, fl.TEXT_TOKENS, dtype=torch.long)
    t = torch.full((batch,), 500.0)

    def step() -> None:
        with torch.inference_mode():
            model(hidden_states=x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask,
                  num_frames=frames, height=height, width=width, return_dict=False)

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8, help="output frames checked (safety_checker_frames)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--block-tokens", type=int, default=16 * 4 * 8, help="tokens of the 1-block 13B measurement")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    video = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    print(f"CPU, {torch.get_num_threads()} threads, fp32; a {WIDTH}x{HEIGHT}, {FRAMES}-frame request; checker: "
          f"input + {args.frames} sampled frames; best of {args.repeats}")

    # 1. tiny
    tiny = SafetyChecker.load(tiny_safety_checker_folder(), frames=args.frames)
    tiny_check = best_of(lambda: checker_request(tiny, image, video), args.repeats)
    w, h = tiny_cpu_size(WIDTH, HEIGHT, FRAMES, LTXV_13B_097_DEV.downscale_factor) or (WIDTH, HEIGHT)
    g = plan_geometry(w, h, FRAMES, LTXV_13B_097_DEV.downscale_factor)
    lf, lh, lw = (g.num_frames_padded - 1) // 8 + 1, g.first_pass_height // 32, g.first_pass_width // 32
    tiny_step = best_of(transformer_step(TINY_TRANSFORMER, PASS1_BATCH, lf * lh * lw, lf, lh, lw), args.repeats)
    tiny_full = best_of(transformer_step(TINY_TRANSFORMER, PASS1_BATCH, PASS1_TOKENS, 16, 15, 26), 1, warm_up=False)
    print("\ntiny (--model tiny)")
    print(f"  {f'checker, input + {args.frames} frames':<46}{tiny_check * 1e3:9.1f} ms")
    print(f"  {f'one pass-1 step, CPU preview ({w}x{h}: {lf * lh * lw} tokens)':<46}{tiny_step * 1e3:9.1f} ms")
    print(f"  {'checker / that step':<46}{tiny_check / tiny_step:9.3f}")
    print(f"  {'one pass-1 step at 1280x720 (6,240 tokens)':<46}{tiny_full * 1e3:9.1f} ms")
    print(f"  {'checker / that step':<46}{tiny_check / tiny_full:9.4f}")

    # 2. full size
    vit = full_size_checker(args.frames)
    images = 1 + len(set(np.linspace(0, FRAMES - 1, args.frames).round().astype(int)))
    full_check = best_of(lambda: checker_request(vit, image, video), args.repeats)
    preprocess = best_of(lambda: [vit._model_size(video[i]) for i in range(images)], args.repeats)
    real = fl.real_configs()["transformer"]
    one_block = {**real, "num_layers": 1}
    n = args.block_tokens
    block_time = best_of(transformer_step(one_block, 1, n, 16, 4, n // 64), args.repeats)
    block_flops = fl.transformer_flops(one_block, 1, n).total
    rate = block_flops / block_time
    step_flops = fl.transformer_flops(real, PASS1_BATCH, PASS1_TOKENS).total
    step_time = step_flops / rate
    check_flops = vit_flops(images)
    n1, n2 = fl.sample_forwards()
    request_flops = fl.request_flops(fl.real_configs(), WIDTH, HEIGHT, FRAMES).total
    print(f"\nfull size (ViT-base/16 at 224 px, {sum(p.numel() for p in vit.model.parameters()) / 1e6:.1f}M "
          "parameters, random weights)")
    print(f"  {f'checker, input + {args.frames} frames':<46}{full_check * 1e3:9.1f} ms  "
          f"({check_flops / 1e9:.0f} GFLOP; "
          f"of which resizing {images} 1280x720 images: {preprocess * 1e3:.1f} ms)")
    print(f"  {f'13B, 1 block at {n} tokens':<46}{block_time * 1e3:9.1f} ms  ({block_flops / 1e12:.2f} TFLOP: "
          f"{rate / 1e9:.0f} GFLOP/s)")
    print(f"  {'13B, one pass-1 step (estimated)':<46}{step_time:9.1f} s   "
          f"({step_flops / 1e12:.0f} TFLOP at that rate)")
    print(f"  {'checker / 13B pass-1 step, time':<46}{full_check / step_time:9.5f}")
    print(f"  {'checker / 13B pass-1 step, FLOPs':<46}{check_flops / step_flops:9.5f}")
    print(f"  {'checker / whole 13B request, FLOPs':<46}{check_flops / request_flops:9.6f}  "
          f"({n1} + {n2} sample-forwards, "
          f"{request_flops / 1e15:.0f} PFLOP)")
    print(f"  {'full-size checker / tiny CPU-preview step':<46}{full_check / tiny_step:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
