"""LoRA application: unfused hooks against fuse/unfuse, measured in one run.

    python benchmarks/lora_switch.py [--width 1024] [--layers 4] [--tokens 1024] [--rank 32] [--repeats 5]

A transformer of the LTX-Video architecture (narrower and shallower than the 13B so that it runs on a CPU) gets two
LoRA sets on every attention and feed-forward Linear. Printed, as medians of --repeats alternating runs:
- one denoising step (transformer forward, batch 2: conditional + perturbed, as the second pass) with no LoRA;
- the same step with the LoRAs applied unfused (forward hooks) — the per-step overhead of ltxserve's mode;
- switching between the two cached LoRA sets: unfused (remove hooks, add hooks) vs fused (restore the saved base
  weights, then W += scale·B·A for the next set — the copy is what makes fusing exactly removable);
all as ratios to one bare step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import LTXVideoTransformer3DModel

from ltxserve.engine.lora import LoraAdapter, LoraLayer, applied


def make_adapter(tr: torch.nn.Module, rank: int, seed: int) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, m in tr.named_modules():
        if isinstance(m, torch.nn.Linear) and name.startswith("transformer_blocks.") and (".attn" in name or ".ff." in name):
            layers[name] = LoraLayer(down=torch.randn(rank, m.in_features, generator=g) * 0.01,
                                     up=torch.randn(m.out_features, rank, generator=g) * 0.01, scale=1.0)
    return LoraAdapter(digest=str(seed), layers=layers)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1024, help="inner dim (the 13B has 4096)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    heads = args.width // 128
    tr = LTXVideoTransformer3DModel(in_channels=128, out_channels=128, num_attention_heads=heads,
                                    attention_head_dim=128, cross_attention_dim=args.width, num_layers=args.layers,
                                    caption_channels=256).eval().requires_grad_(False)
    a, b = make_adapter(tr, args.rank, 1), make_adapter(tr, args.rank, 2)
    modules = dict(tr.named_modules())
    g = torch.Generator().manual_seed(0)
    step_args = dict(hidden_states=torch.randn(2, args.tokens, 128, generator=g),
                     encoder_hidden_states=torch.randn(2, 64, 256, generator=g),
                     timestep=torch.full((2, args.tokens), 500.0), encoder_attention_mask=torch.ones(2, 64),
                     video_coords=torch.rand(2, 3, args.tokens, generator=g) * 100, return_dict=False)

    def step():
        with torch.inference_mode():
            tr(**step_args)

    def unfused_step():
        with applied(tr, [(a, 1.0)]):
            step()

    base = {name: modules[name].weight.detach().clone() for name in a.layers}

    def fuse(adapter: LoraAdapter) -> None:
        with torch.no_grad():
            for name in adapter.layers:
                modules[name].weight.copy_(base[name])  # restore exactly, then add the next set
                modules[name].weight.add_(adapter.delta(name))

    def switch_fused():
        fuse(b)
        fuse(a)

    def switch_unfused():
        # what a request switch costs unfused: install the hooks of one set and remove them, twice
        for adapter in (b, a):
            with applied(tr, [(adapter, 1.0)]):
                pass

    step()  # warm-up
    bare_t, unfused_t, sw_fused, sw_unfused = [], [], [], []
    for _ in range(args.repeats):
        bare_t.append(timed(step, 1))
        unfused_t.append(timed(unfused_step, 1))
        sw_fused.append(timed(switch_fused, 1) / 2)
        sw_unfused.append(timed(switch_unfused, 1) / 2)
    fuse_step = timed(step, args.repeats)  # fused weights: the step is a bare step
    bare, unfused = statistics.median(bare_t), statistics.median(unfused_t)
    print(f"model: width {args.width}, {args.layers} layers, {args.tokens} tokens x2, LoRA rank {args.rank} on "
          f"{len(a.layers)} Linears; repeats {args.repeats}")
    print(f"one denoising step, no LoRA        {bare * 1000:9.1f} ms")
    print(f"one step, LoRA unfused (hooks)      {unfused * 1000:9.1f} ms   overhead {unfused / bare - 1:+.1%}")
    print(f"one step, LoRA fused                {fuse_step * 1000:9.1f} ms   overhead {fuse_step / bare - 1:+.1%}")
    print(f"switch LoRA sets, unfused           {statistics.median(sw_unfused) * 1000:9.2f} ms   "
          f"= {statistics.median(sw_unfused) / bare:.3f} steps")
    print(f"switch LoRA sets, fused (+restore)  {statistics.median(sw_fused) * 1000:9.2f} ms   "
          f"= {statistics.median(sw_fused) / bare:.3f} steps")


if __name__ == "__main__":
    main()
