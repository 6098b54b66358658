"""Loading benchmark: peak resident memory and throughput of `load_components` on a large checkpoint.

Builds (once) a synthetic checkpoint in the real original layout: the 13B transformer configuration with fewer
layers plus the real 0.9.7 VAE in one bf16 .safetensors file with its `config` metadata, the real spatial upscaler,
and a tiny text encoder, written by `ltxserve.engine.models.save_original_layout`. Then, in a fresh process, it reads
the files from disk (page cache evicted) and times that, evicts again, and loads them with `load_components`,
sampling resident memory. It prints, from that one run:

  peak RSS increase while loading / size of the files       (target <= 1.2)
  load time / time to read the same files from disk         (target <= 1.5)

Usage:  python benchmarks/load_weights.py [--dir DIR] [--layers 4] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

READ_CHUNK = 16 * 1024 * 1024
GB = 1e9


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def _evict(paths: list[Path]) -> bool:
    """Drop the files' pages from the page cache (no root needed for our own files)."""
    ok = True
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            ok = False
        finally:
            os.close(fd)
    return ok


def _read_all(paths: list[Path]) -> int:
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _RssSampler(threading.Thread):
    """Samples VmRSS / RssAnon / RssFile every few ms to find their peaks during the load."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            for k in self.peak:
                self.peak[k] = max(self.peak[k], _status_kb(k))
            time.sleep(self.interval)

    def stop(self) -> dict[str, int]:
        self._stopped.set()
        self.join()
        return {k: v * 1024 for k, v in self.peak.items()}


def build(directory: Path, layers: int, raw: bool = False) -> None:
    """Write the synthetic checkpoint (runs in its own process; its memory use is not measured)."""
    import json as _json

    import torch
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

    configs = Path(__file__).resolve().parents[1] / "ltxserve" / "weights" / "configs"

    def config(name: str) -> dict:
        return {k: v for k, v in _json.loads((configs / f"{name}.json").read_text()).items() if not k.startswith("_")}

    def materialise(cls, kwargs: dict, dtype: torch.dtype):
        # Build on meta and allocate straight in the target dtype: no fp32 copy of billions of parameters.
        with torch.device("meta"):
            model = cls(**kwargs)
        model = model.to_empty(device="cpu").to(dtype)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in list(model.parameters()) + list(model.buffers()):
                if p.is_floating_point():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(p.dtype))
        return model.eval()

    transformer = materialise(LTXVideoTransformer3DModel, {**config("transformer"), "num_layers": layers}, torch.bfloat16)
    vae = materialise(AutoencoderKLLTXVideo, config("vae"), torch.bfloat16)
    upsampler = materialise(LTXLatentUpsamplerModel, config("latent_upsampler"), torch.float32)
    directory.mkdir(parents=True, exist_ok=True)
    if raw:
        # Same sizes and file names, diffusers key names: enough to measure the safetensors baseline only.
        from safetensors.torch import save_file

        state = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
        state.update({f"vae.{k}": v for k, v in vae.state_dict().items()})
        save_file(state, str(directory / "ltxv-13b-0.9.7-dev.safetensors"))
        save_file(upsampler.state_dict(), str(directory / "ltxv-spatial-upscaler-0.9.7.safetensors"))
        return
    from ltxserve.engine.models import build_tiny_components, save_original_layout

    components = build_tiny_components(0)
    components.transformer, components.vae, components.latent_upsampler = transformer, vae, upsampler
    save_original_layout(components, directory)


def _load_safetensors(directory: Path, dtype) -> dict:
    """The baseline: safetensors' own loader, every tensor into host memory in `dtype`."""
    from safetensors.torch import load_file

    return {
        p.name: {k: v.to(dtype) for k, v in load_file(str(p)).items()} for p in _files(directory)
        if p.suffix == ".safetensors"
    }


def _tensors(obj) -> list:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, torch.nn.Module):
        return list(obj.parameters()) + list(obj.buffers())
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return [t for v in vars(obj).values() for t in _tensors(v)] if hasattr(obj, "__dict__") else []


def _touch(obj) -> int:
    """Read one element of every 4 KiB page of every tensor, so that lazily mapped weights are really in memory."""
    total = 0
    seen: set[int] = set()
    for t in _tensors(obj):
        if t.device.type != "cpu" or t.data_ptr() in seen or t.numel() == 0:
            continue
        seen.add(t.data_ptr())
        flat = t.detach().reshape(-1)
        step = max(1, 4096 // t.element_size())
        total += int(flat[::step].float().sum().isfinite())
    return total


def measure(directory: Path, dtype_name: str, loader: str, rounds: int) -> dict:
    """Alternate cold reads and cold loads `rounds` times; returns the raw figures (runs in a fresh process).

    Disk speed on a shared machine drifts, so both timings are medians over interleaved rounds. Resident memory is
    sampled during the first load, when nothing has been loaded before in this process.
    """
    import gc
    import statistics

    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    if loader == "components":
        from ltxserve.engine.models import load_components

        def load():
            return load_components(directory, device="cpu", dtype=dtype)
    else:
        def load():
            return _load_safetensors(directory, dtype)

    paths = _files(directory)
    file_bytes = sum(p.stat().st_size for p in paths)
    reads: list[float] = []
    loads: list[float] = []
    evicted = True
    for round_index in range(rounds):
        evicted = _evict(paths) and evicted
        t0 = time.perf_counter()
        _read_all(paths)
        reads.append(time.perf_counter() - t0)

        _evict(paths)
        if round_index == 0:
            baseline = {"VmRSS": _status_kb("VmRSS") * 1024, "RssAnon": _status_kb("RssAnon") * 1024}
            sampler = _RssSampler()
            sampler.start()
        t0 = time.perf_counter()
        loaded = load()
        touched = _touch(loaded)  # a lazily mapped tensor is not loaded until read: read one element per page
        loads.append(time.perf_counter() - t0)
        if round_index == 0:
            peak = sampler.stop()
            hwm = _status_kb("VmHWM") * 1024
            if loader == "components":
                loaded_params = sum(p.numel() for p in loaded.transformer.parameters())
            else:
                loaded_params = sum(v.numel() for k, v in loaded["ltxv-13b-0.9.7-dev.safetensors"].items()
                                    if k.startswith("transformer."))
        del loaded
        gc.collect()  # unmap the loaded files, or their pages could not be evicted
    return {
        "files": len(paths),
        "file_bytes": file_bytes,
        "page_cache_evicted": evicted,
        "rounds": rounds,
        "read_seconds": statistics.median(reads),
        "load_seconds": statistics.median(loads),
        "read_seconds_all": reads,
        "load_seconds_all": loads,
        "baseline_rss": baseline["VmRSS"],
        "baseline_anon": baseline["RssAnon"],
        "peak_rss_sampled": peak["VmRSS"],
        "peak_anon_sampled": peak["RssAnon"],
        "peak_file_sampled": peak["RssFile"],
        "vm_hwm": hwm,
        "transformer_params": loaded_params,
        "tensors_touched": touched,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ltxserve-load-bench"), help="checkpoint folder")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers (the real model has 48)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="dtype to load into")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the checkpoint even if present")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved read / load rounds (medians are used)")
    parser.add_argument(
        "--loader", choices=("components", "safetensors"), default="components",
        help="components: ltxserve's load_components on the real layout (the measurement that counts); "
        "safetensors: safetensors.load_file on a same-size file with diffusers key names (a baseline that needs "
        "no engine code)",
    )
    parser.add_argument("--_build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._build:
        build(args.dir, args.layers, raw=args.loader == "safetensors")
        return 0
    if args._measure:
        print(json.dumps(measure(args.dir, args.dtype, args.loader, args.rounds)))
        return 0

    me = [sys.executable, str(Path(__file__).resolve())]
    marker = args.dir / ".built"
    stamp = f"{args.layers} {args.loader}"
    if args.rebuild or not marker.exists() or marker.read_text() != stamp:
        print(f"building a synthetic {args.layers}-layer 13B-configuration checkpoint in {args.dir} ...", flush=True)
        common = ["--dir", str(args.dir), "--layers", str(args.layers), "--loader", args.loader]
        subprocess.run([*me, "--_build", *common], check=True)
        marker.write_text(stamp)
    out = subprocess.run(
        [*me, "--_measure", "--dir", str(args.dir), "--dtype", args.dtype, "--loader", args.loader,
         "--rounds", str(args.rounds)],
        check=True, capture_output=True, text=True,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])

    rss_increase = max(r["vm_hwm"], r["peak_rss_sampled"]) - r["baseline_rss"]
    rss_ratio = rss_increase / r["file_bytes"]
    anon_ratio = (r["peak_anon_sampled"] - r["baseline_anon"]) / r["file_bytes"]
    speed_ratio = r["load_seconds"] / r["read_seconds"]
    print(f"loader: {args.loader}")
    print(f"files: {r['files']} in {args.dir}, {r['file_bytes'] / GB:.2f} GB "
          f"(transformer {r['transformer_params'] / 1e9:.2f} B params, {args.layers} layers); load dtype {args.dtype}")
    print(f"page cache evicted before each step: {r['page_cache_evicted']}")
    print(f"median of {r['rounds']} interleaved rounds; reads {[round(x, 2) for x in r['read_seconds_all']]} s, "
          f"loads {[round(x, 2) for x in r['load_seconds_all']]} s")
    print(f"read from disk: {r['read_seconds']:.2f} s ({r['file_bytes'] / GB / r['read_seconds']:.2f} GB/s); "
          f"load + first read of every page: {r['load_seconds']:.2f} s")
    print(f"peak RSS increase while loading: {rss_increase / GB:.2f} GB "
          f"(anonymous {max(0, r['peak_anon_sampled'] - r['baseline_anon']) / GB:.2f} GB, "
          f"file-backed peak {r['peak_file_sampled'] / GB:.2f} GB)")
    print(f"RATIO peak RSS increase / file size = {rss_ratio:.2f}  (target <= 1.2)"
          f"{'  OK' if rss_ratio <= 1.2 else '  OVER'}")
    print(f"RATIO anonymous memory increase / file size = {anon_ratio:.2f}")
    print(f"RATIO load time / read time = {speed_ratio:.2f}  (target <= 1.5)"
          f"{'  OK' if speed_ratio <= 1.5 else '  OVER'}")
    return 0 if rss_ratio <= 1.2 and speed_ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
