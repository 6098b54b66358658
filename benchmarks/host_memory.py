"""Host memory of loading the model and of each placement: anonymous memory against file-backed checkpoint pages.

Writes a random-weight checkpoint of the real 13B architecture at reduced depth (1 transformer block, 1 T5 layer,
one resnet per VAE stage: real widths) in the original layout (models.save_original_layout), then, in a fresh
process, loads it with ltxserve's loader (models.load_components, bf16, on the CPU as the server does before placing)
and reads /proc/self/smaps_rollup: `Anonymous` (memory the process owns: copies of the weights) and `Rss - Anonymous`
(file-backed pages: the memory-mapped checkpoint, which the kernel can drop and re-read). Then it takes the
components a placement puts on the GPU off the host (moved to the `meta` device, standing in for the GPU: their
host storage is freed exactly as a move to CUDA frees it) and reads again. Each component's bytes are scaled by its
full-size parameter count over the reduced one, so the table shows the real 13B's figures.

    python benchmarks/host_memory.py [--keep DIR]

Placements (memory_plan / placement.py): gpu (everything resident on the GPU), offload with the transformer, VAE
and upsampler resident (T5 visits), offload with nothing resident, sequential (everything streamed from the host).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GiB = 1024**3
COMPONENTS = ("text_encoder", "transformer", "latent_upsampler", "vae")
PLACEMENTS = {
    "gpu": COMPONENTS,
    "offload (T5 visits)": ("transformer", "latent_upsampler", "vae"),
    "offload (all visit)": (),
    "sequential": (),
}


def smaps() -> dict[str, int]:
    """Anonymous and file-backed resident bytes of this process."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            fields[key.strip()] = int(parts[0]) * 1024
    return {"rss": fields["Rss"], "anonymous": fields["Anonymous"], "file": fields["Rss"] - fields["Anonymous"]}


def mapped_files(min_bytes: int = 64 * 2**20) -> dict[str, int]:
    """Resident bytes of each memory-mapped file above `min_bytes` (from /proc/self/smaps)."""
    out: dict[str, int] = {}
    current = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            current = head[5] if len(head) > 5 else None
        elif line.startswith("Rss:") and current:
            out[current] = out.get(current, 0) + int(head[1]) * 1024
    return {k: v for k, v in out.items() if v >= min_bytes}


def write_checkpoint(folder: Path) -> dict[str, int]:
    """The reduced real architecture with random weights in the original layout; returns its parameter counts."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_request import build_random_components, real_architecture_configs

    from ltxserve.engine.models import save_original_layout

    cfgs = real_architecture_configs(reduced=True)
    c = build_random_components(cfgs, torch.bfloat16)
    c.latent_upsampler.to(torch.float32)  # published in fp32
    c.scheduler_config = {"_class_name": "RectifiedFlowScheduler", "shifting": None, "sampler": "LinearQuadratic"}
    save_original_layout(c, folder)
    return {name: sum(p.numel() for p in getattr(c, name).parameters()) for name in COMPONENTS}


def measure(folder: Path) -> dict:
    """Run in a fresh process: load; read each component's weights once (as its first forward, or its first copy to
    the GPU, does: a memory-mapped page is resident only once read), recording what each adds; then take every
    component off the host (to `meta`, as a move to the GPU frees host storage) and see what stays."""
    import gc

    import torch

    from ltxserve.engine.models import load_components

    before = smaps()
    c = load_components(folder, device="cpu", dtype=torch.bfloat16)
    gc.collect()
    loaded = smaps()
    weights = {name: sum(p.numel() * p.element_size() for p in getattr(c, name).parameters()) for name in COMPONENTS}
    used = {}
    previous = loaded
    with torch.no_grad():
        for name in COMPONENTS:
            for p in getattr(c, name).parameters():
                p.view(-1)[:: max(1, 4096 // p.element_size())].sum()  # one read per page
            now = smaps()
            used[name] = {"anonymous": now["anonymous"] - previous["anonymous"], "file": now["file"] - previous["file"]}
            previous = now
    touched = previous
    for name in COMPONENTS:
        getattr(c, name).to("meta")
    gc.collect()
    return {"before": before, "loaded": loaded, "touched": touched, "moved": smaps(), "weights": weights,
            "used": used, "mapped_after_move": mapped_files()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", type=Path, default=None, help="write the checkpoint here and keep it")
    p.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # the child process
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0

    from ltxserve.engine.placement import count_model_sizes

    with tempfile.TemporaryDirectory(prefix="ltxserve-hostmem-") as tmp:
        folder = args.keep or Path(tmp)
        reduced = write_checkpoint(folder)
        child = subprocess.run([sys.executable, __file__, "--measure", str(folder)], capture_output=True, text=True,
                               check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        m = json.loads(child.stdout.strip().splitlines()[-1])

    sizes = count_model_sizes()
    full = {"transformer": sizes.transformer_params, "vae": sizes.vae_params,
            "latent_upsampler": sizes.upsampler_params, "text_encoder": sizes.text_encoder_params}
    scale = {name: full[name] / reduced[name] for name in COMPONENTS}

    def scaled(kind: str, names) -> float:
        return sum(m["used"][n][kind] * scale[n] for n in names)

    base = m["before"]
    print("The reduced real architecture (bf16, original layout) loaded by ltxserve's loader: what each component")
    print("holds in host memory once its weights have been read")
    print(f"{'component':<18}{'weights MiB':>12}{'anon MiB':>10}{'file MiB':>10}{'x to 13B':>10}")
    for n in COMPONENTS:
        w, u = m["weights"][n], m["used"][n]
        print(f"{n:<18}{w / 2**20:>12.0f}{u['anonymous'] / 2**20:>10.0f}{u['file'] / 2**20:>10.0f}{scale[n]:>10.1f}")
    for label, key in (("after loading", "loaded"), ("after reading every weight", "touched"),
                       ("after moving every component off the host", "moved")):
        print(f"{label}: +{(m[key]['anonymous'] - base['anonymous']) / GiB:.2f} GiB anonymous, "
              f"+{(m[key]['file'] - base['file']) / GiB:.2f} GiB file-backed")

    for path, nbytes in m["mapped_after_move"].items():
        print(f"  still mapped after the move: {Path(path).name}: {nbytes / GiB:.2f} GiB resident")

    w13 = {n: m["weights"][n] * scale[n] for n in COMPONENTS}
    left_file = (m["moved"]["file"] - base["file"]) / max(1, m["touched"]["file"] - base["file"])
    at_load = (m["loaded"]["anonymous"] - base["anonymous"]) * sum(w13.values()) / sum(m["weights"].values())
    rows = {}
    for placement, resident in PLACEMENTS.items():
        kept = [n for n in COMPONENTS if n not in resident]
        rows[placement] = {
            "at_load_anonymous": at_load,
            "steady_anonymous": scaled("anonymous", kept),
            "steady_file": scaled("file", kept) if kept else left_file * scaled("file", COMPONENTS),
            "pinned": sum(w13[n] for n in kept),  # a pinned (page-locked) copy of what visits, if pinned
        }
    print("\nThe real 13B, scaled by parameter count (GiB). anon: memory the process owns; file: pages of the")
    print("memory-mapped checkpoint (the kernel may drop and re-read them); pinned: page-locked copies of the weights")
    print("that visit the GPU, if transfers use pinned memory")
    print(f"{'placement':<22}{'at load anon':>13}{'steady anon':>13}{'steady file':>13}{'pinned':>9}")
    for placement, r in rows.items():
        print(f"{placement:<22}{r['at_load_anonymous'] / GiB:>13.1f}{r['steady_anonymous'] / GiB:>13.1f}"
              f"{r['steady_file'] / GiB:>13.1f}{r['pinned'] / GiB:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps({"measured": m, "reduced_params": reduced, "scale": scale,
                                         "placements": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
