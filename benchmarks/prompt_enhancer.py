"""What `expand_prompt` adds to a request, against one denoising step of the transformer, measured in one run.

1. Tiny (--model tiny): one generation through ImageToVideoEndpoint.generate with expand_prompt, timing the
   enhancer (caption + rewrite, at the settings' token limits; the tokens generated are printed: random weights
   may stop early) and every transformer call (one per denoising step) with forward hooks. Prints the ratio.
2. Full-size shapes on this CPU, random weights, bf16: Llama 3.2 3B from its parts (its 28 layers, 6.4 GB, do not
   fit beside the other jobs of a shared machine): one decoder layer at full size on 1 token and on a 450-token
   prefill, and the 128k-vocabulary head, medians of many runs, scaled to 28 layers and 256 new tokens. And
   Florence-2-large's full shape (0.77B): one 768x768 caption with 3 beams for --caption-tokens tokens,
   extrapolated per token. These are CPU figures: they say how slow the CPU fallback is, not GPU times.

    python benchmarks/prompt_enhancer.py [--skip-full] [--caption-tokens 48] [--threads 2] [--repeats 3]
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
    lengths: dict[str, int] = {}
    enhancer = endpoint.expander.enhancer
    for name, model in (("caption", enhancer.captioner.model), ("rewrite", enhancer.llm)):
        def counted(*args, _generate=model.generate, _name=name, **kwargs):
            out = _generate(*args, **kwargs)
            lengths[_name] = out.shape[1] - (0 if _name == "caption" else kwargs["input_ids"].shape[1])
            return out

        model.generate = counted
    steps.clear(), enhance.clear()
    endpoint.generate(ImageToVideoInput(**body))
    step = statistics.median(steps)
    print(f"tiny ({threads} threads): enhancer {enhance[0]:.2f} s per request (caption {lengths['caption']} tokens of "
          f"<= {settings.prompt_enhancer_caption_tokens}, rewrite {lengths['rewrite']} of <= "
          f"{settings.prompt_enhancer_max_tokens}); "
          f"one denoising step {step * 1e3:.1f} ms (median of {len(steps)}); ratio {enhance[0] / step:.0f} steps")


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIG_DIR / f"{name}.json").read_text()).items() if not k.startswith("_")}


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _llm(repeats: int) -> None:
    """Llama 3.2 3B's cost from its parts, at full size: one decoder layer (of 28) on 1 token (a decoding step: the
    layer's weights dominate; attention over a 1.5k-token cache adds ~1%) and on 450 tokens (the prefill), and the
    128k-vocabulary head on one token; medians of many runs, so that a shared machine's noise averages out."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(**_config("prompt_llm"))
    config._attn_implementation = "sdpa"  # as from_pretrained sets it
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        layer = LlamaDecoderLayer(config, 0).eval()
        head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        rope = LlamaRotaryEmbedding(config)
    finally:
        torch.set_default_dtype(torch.float32)

    def layer_time(tokens: int, n: int) -> float:
        hidden = torch.randn(1, tokens, config.hidden_size, dtype=torch.bfloat16)
        positions = torch.arange(tokens)[None]
        cos_sin = rope(hidden, positions)
        with torch.inference_mode():
            layer(hidden, position_ids=positions, position_embeddings=cos_sin)  # warm-up
            return _median(lambda: layer(hidden, position_ids=positions, position_embeddings=cos_sin), n)

    with torch.inference_mode():
        last = torch.randn(1, 1, config.hidden_size, dtype=torch.bfloat16)
        head(last)
        head_time = _median(lambda: head(last), repeats * 10)
    decode_layer = layer_time(1, repeats * 10)
    prefill_layer = layer_time(450, repeats)
    layers = config.num_hidden_layers
    per_token = layers * decode_layer + head_time
    prefill = layers * prefill_layer + head_time
    print(f"  Llama-3.2-3B, bf16 CPU, from its parts (medians): one layer {decode_layer * 1e3:.1f} ms per decoded "
          f"token, {prefill_layer * 1e3:.0f} ms for a 450-token prefill; head {head_time * 1e3:.1f} ms per token")
    print(f"  so, {layers} layers: prefill {prefill:.1f} s, {per_token:.2f} s per token, "
          f"{prefill + 255 * per_token:.0f} s for 256 new tokens")


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

    first = _median(lambda: generate(1), repeats)
    total = _median(lambda: generate(caption_tokens), repeats)
    per_token = (total - first) / (caption_tokens - 1)
    print(f"  Florence-2-large shape, bf16 CPU, 768x768, 3 beams (medians of {repeats}): 1 caption token {first:.2f} s "
          f"(image encoder + text encoder + a step), {caption_tokens} tokens {total:.2f} s, so "
          f"{per_token * 1e3:.0f} ms per further token; a 100-token caption ~ {first + 99 * per_token:.0f} s, "
          f"1024 tokens (the limit) ~ {first + 1023 * per_token:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--caption-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_tiny:
        _tiny(args.threads)
    if not args.skip_full:
        print(f"full-size shapes, random weights, this CPU ({args.threads} threads):")
        _llm(args.repeats)
        _captioner(args.caption_tokens, args.repeats)


if __name__ == "__main__":
    main()
