"""What `expand_prompt` adds to a request, against one denoising step of the transformer, measured in one run.

1. Tiny (--model tiny): one generation through ImageToVideoEndpoint.generate with expand_prompt, timing the
   enhancer (caption + rewrite, at the settings' token limits: random weights rarely stop early, so this is the
   worst case) and every transformer call (one per denoising step) with forward hooks. Prints the ratio.
2. Full-size shapes on this CPU, random weights, bf16: Llama 3.2 3B's configuration with fewer layers (1 and 3: its
   28 layers do not fit beside the other jobs of a shared machine); prefill of a ~450-token conversation and greedy
   decoding of --llm-tokens tokens against 1 token (best of --repeats), per layer count; the time is linear in the layer count (a + b * layers:
   embedding and the 128k-vocabulary head + the layers), so it is extrapolated to 28 layers and to 256 new tokens
   per token. And Florence-2-large's full shape (0.77B): one 768x768 caption with 3 beams for --caption-tokens tokens,
   extrapolated per token. These are CPU figures: they say how slow the CPU fallback is, not GPU times.

    python benchmarks/prompt_enhancer.py [--skip-full] [--llm-tokens 16] [--caption-tokens 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from ltxserve.engine.prompt_enhancer_plan import CONFIG_DIR


def _tiny(threads: int) -> None:
    from ltxserve.config import Settings
    from ltxserve.engine.endpoint import ImageToVideoEndpoint
    from ltxserve.engine.schema import ImageToVideoInput

    tmp = Path(tempfile.mkdtemp(prefix="pe-bench-"))
    settings = Settings(model="tiny", device="cpu", data_dir=tmp)
    endpoint = ImageToVideoEndpoint(settings)
    steps: list[float] = []
    started: list[float] = []
    t = endpoint.components.transformer
    t.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    t.register_forward_hook(lambda *_: steps.append(time.perf_counter() - started[-1]))
    enhance: list[float] = []
    original = endpoint.expander.expand

    def timed(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            enhance.append(time.perf_counter() - begin)

    endpoint.expander.expand = timed  # type: ignore[method-assign]
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (768, 512), (120, 80, 40)).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = dict(prompt="a red ball rolls across the table", image_url=uri, seed=1, num_frames=9, width=96, height=64,
                first_pass_num_inference_steps=6, first_pass_skip_final_steps=1, second_pass_num_inference_steps=6,
                second_pass_skip_initial_steps=3, expand_prompt=True)
    endpoint.generate(ImageToVideoInput(**body))  # loads the enhancer (built once) and warms up
    steps.clear(), enhance.clear()
    endpoint.generate(ImageToVideoInput(**body))
    step = statistics.median(steps)
    print(f"tiny ({threads} threads): enhancer {enhance[0]:.2f} s per request (caption <= "
          f"{settings.prompt_enhancer_caption_tokens} + rewrite <= {settings.prompt_enhancer_max_tokens} tokens); "
          f"one denoising step {step * 1e3:.1f} ms (median of {len(steps)}); ratio {enhance[0] / step:.0f} steps")


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIG_DIR / f"{name}.json").read_text()).items() if not k.startswith("_")}


def _best(fn, repeats: int) -> float:
    """The fastest of `repeats` timings: on a shared machine the least disturbed run is the closest to the truth."""
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return min(times)


def _per_token(generate, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(time of a 1-token generation = prefill, time per further token) from N-token and 1-token generations."""
    one = _best(lambda: generate(1), repeats)
    many = _best(lambda: generate(new_tokens), repeats)
    return one, (many - one) / (new_tokens - 1)


def _llm(layers_list: list[int], new_tokens: int, repeats: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = _config("prompt_llm")
    prompt = torch.randint(0, cfg["vocab_size"], (1, 450))
    rows = []
    for layers in layers_list:
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = LlamaForCausalLM(LlamaConfig(**{**cfg, "num_hidden_layers": layers})).eval()
        finally:
            torch.set_default_dtype(torch.float32)

        def generate(n: int) -> None:
            with torch.inference_mode():
                model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)

        prefill, per_token = _per_token(generate, new_tokens, repeats)
        rows.append((layers, prefill, per_token))
        print(f"  Llama-3.2-3B shape, {layers} layer(s), bf16 CPU: prefill of 450 tokens {prefill:.2f} s, "
              f"{per_token * 1e3:.0f} ms per new token (best of {repeats})")
        del model
    (l1, p1, t1), (l2, p2, t2) = rows[0], rows[-1]
    bp, bt = (p2 - p1) / (l2 - l1), (t2 - t1) / (l2 - l1)
    full_p, full_t = p1 + bp * (28 - l1), t1 + bt * (28 - l1)
    print(f"  extrapolated to 28 layers (linear in layers): prefill {full_p:.1f} s, {full_t:.2f} s per token, "
          f"{full_p + 255 * full_t:.0f} s for 256 new tokens")


def _captioner(caption_tokens: int, repeats: int) -> None:
    from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2VisionConfig

    cfg = _config("prompt_captioner")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Florence2ForConditionalGeneration(Florence2Config(
            vision_config=Florence2VisionConfig(**cfg["vision_config"]), text_config=BartConfig(**cfg["text_config"]),
            image_token_id=cfg["image_token_id"])).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    pixels = torch.randn(1, 3, 768, 768, dtype=torch.bfloat16)
    ids = torch.cat([torch.full((1, 577), cfg["image_token_id"]), torch.randint(3, 50000, (1, 12))], dim=1)

    def generate(n: int) -> None:
        with torch.inference_mode():
            model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=n, min_new_tokens=n, num_beams=3,
                           do_sample=False)

    first, per_token = _per_token(generate, caption_tokens, repeats)
    print(f"  Florence-2-large shape, bf16 CPU, 768x768, 3 beams: image + first token {first:.2f} s, "
          f"{per_token * 1e3:.0f} ms per further caption token (best of {repeats}); a 100-token caption ~ "
          f"{first + 99 * per_token:.0f} s, 1024 tokens (the limit) ~ {first + 1023 * per_token:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--llm-tokens", type=int, default=16)
    ap.add_argument("--caption-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _tiny(args.threads)
    if not args.skip_full:
        print(f"full-size shapes, random weights, this CPU ({args.threads} threads):")
        _llm([1, 3], args.llm_tokens, args.repeats)
        _captioner(args.caption_tokens, args.repeats)


if __name__ == "__main__":
    main()
