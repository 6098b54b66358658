"""End-to-end generation time against the bare model calls it makes, measured in one run.

Runs one image-to-video generation through `ImageToVideoEndpoint.generate` while recording every call into the
transformer, the latent upsampler, the VAE (encode and decode) and the text encoder (inputs captured, not timed);
then replays each recorded call on its own and sums their times. The ratio end-to-end / sum-of-bare-calls is the
engine's overhead: planning, conditioning, guidance arithmetic, RNG draws, resizing, the uint8 conversion.

    python benchmarks/engine_overhead.py [--model tiny|PATH] [--width 96 --height 64 --num-frames 17] [--repeats 5]

Prints medians over --repeats runs of each side (alternating, so machine noise hits both alike).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from ltxserve.config import Settings
from ltxserve.engine.endpoint import ImageToVideoEndpoint
from ltxserve.engine.models import load_components
from ltxserve.engine.schema import ImageToVideoInput


def _test_image_uri(width: int, height: int) -> str:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@contextmanager
def _recording(modules: dict[str, torch.nn.Module], calls: list):
    """Record (name, bound method, args, kwargs) of every top-level call into the given modules."""
    originals = {}

    def wrap(name, module, attr):
        fn = getattr(module, attr)
        originals[(name, attr)] = (module, fn)

        def recorder(*args, **kwargs):
            # STG state lives in the attention processors: keep it with the call so the replay does the same work
            stg = [getattr(b.attn1.processor, "perturbed_rows", None) for b in getattr(module, "transformer_blocks", [])]
            calls.append((f"{name}.{attr}", fn, args, kwargs, module, stg))
            return fn(*args, **kwargs)

        setattr(module, attr, recorder)

    for name, module in modules.items():
        if name == "vae":
            wrap(name, module, "encode")
            wrap(name, module, "decode")
        else:
            wrap(name, module, "forward")
    try:
        yield
    finally:
        for (name, attr), (module, _fn) in originals.items():
            delattr(module, attr)  # back to the class attribute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--num-frames", type=int, default=17)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    torch.set_num_threads(1)  # steadier timings on a shared 2-core machine
    settings = Settings(model=args.model, device="cpu", dtype="fp32")
    components = load_components(args.model, device="cpu", dtype=torch.float32)
    endpoint = ImageToVideoEndpoint(settings, components)
    inp = ImageToVideoInput(prompt="a cat walks on the grass", image_url=_test_image_uri(160, 120), seed=42,
                            num_frames=args.num_frames)

    modules = {
        "transformer": components.transformer,
        "latent_upsampler": components.latent_upsampler,
        "vae": components.vae,
        "text_encoder": components.text_encoder,
    }

    endpoint.generate(inp, width=args.width, height=args.height)  # warm-up (allocator, kernels, lazy imports)

    calls: list = []
    with _recording(modules, calls):
        endpoint.generate(inp, width=args.width, height=args.height)

    def replay() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for _name, fn, a, kw, module, stg in calls:
                for block, rows in zip(getattr(module, "transformer_blocks", []), stg):
                    block.attn1.processor.perturbed_rows = rows
                fn(*a, **kw)
        return time.perf_counter() - start

    def end_to_end() -> float:
        start = time.perf_counter()
        endpoint.generate(inp, width=args.width, height=args.height)
        return time.perf_counter() - start

    e2e, bare = [], []
    for _ in range(args.repeats):
        e2e.append(end_to_end())
        bare.append(replay())

    by_module: dict[str, int] = {}
    for name, *_rest in calls:
        by_module[name] = by_module.get(name, 0) + 1
    e2e_med, bare_med = statistics.median(e2e), statistics.median(bare)
    print(f"request: {args.width}x{args.height}, {args.num_frames} frames, model={args.model}, repeats={args.repeats}")
    print("bare calls recorded: " + ", ".join(f"{k} x{v}" for k, v in sorted(by_module.items())))
    print(f"end-to-end generate      median {e2e_med * 1000:8.1f} ms   (runs: {', '.join(f'{t*1000:.0f}' for t in e2e)})")
    print(f"sum of bare model calls  median {bare_med * 1000:8.1f} ms   (runs: {', '.join(f'{t*1000:.0f}' for t in bare)})")
    print(f"overhead ratio end-to-end / bare = {e2e_med / bare_med:.3f}   (goal <= 1.10)")


if __name__ == "__main__":
    main()
