"""The fused kernels against the torch ops they replace, measured in one run.

On every machine: the memory traffic of one pass-2 step of the real 13B at 720p (1664x960 latents' 24,960 tokens,
batch 2, 48 blocks, dim 4096, bf16 activations, fp32 RoPE tables), per fused op: bytes the unfused torch ops move
(counted by running the torch references on meta tensors of the real shapes and summing every aten op's inputs
and outputs; views move nothing) against bytes the fused kernel moves (its inputs read once, its outputs written
once), and the time those bytes take at the GPU's memory bandwidth. Then each kernel's correctness against its
reference on small shapes (through Triton's interpreter on the CPU, compiled on CUDA).

On CUDA, also: each kernel and its reference timed at the real shapes, and one transformer block of the real size
(random weights) timed eager/compiled x kernels off/on.

    python benchmarks/kernel_traffic.py [--tokens 24960] [--batch 2] [--bandwidth-tbs 3.35] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# run as a script from a checkout: the repository root provides the `kernels` package (as for the other benchmarks)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from kernels.gate_residual import gate_residual, gate_residual_reference  # noqa: E402
from kernels.rmsnorm_modulate import rmsnorm_modulate, rmsnorm_modulate_reference  # noqa: E402
from kernels.rope_qk import rope_qk, rope_qk_reference  # noqa: E402

DIM, HEADS, BLOCKS = 4096, 32, 48  # LTX-Video 13B
VIEWS = {"view", "_unsafe_view", "expand", "slice", "select", "unbind", "unsqueeze", "squeeze", "t", "transpose",
         "permute", "as_strided", "alias", "detach", "unflatten", "split", "empty", "empty_like", "new_empty",
         "empty_strided", "lift_fresh", "_to_copy_meta_noop"}


class _Traffic(TorchDispatchMode):
    """Sums the bytes every non-view aten op reads (tensor inputs) and writes (tensor outputs)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] not in VIEWS:
            self.ops += 1
            for t in _tensors(args) + _tensors(list((kwargs or {}).values())) + _tensors([out]):
                self.bytes += t.numel() * t.element_size()
        return out


def _tensors(items) -> list[torch.Tensor]:
    found = []
    for item in items:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            found += _tensors(item)
    return found


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _step_shapes(batch: int, tokens: int, device: str, dtype=torch.bfloat16, seed: int = 0):
    """The tensors one block call sees at this size: activations, the (B, 2, 6, D) adaLN table's views, q/k, the
    RoPE tables for the first row broadcast over the batch, the q/k norm weights."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, dt=dtype, scale=1.0):
        if device == "meta":
            return torch.empty(shape, device="meta", dtype=dt)
        return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dt)

    n_cond = tokens // 16  # the first of 16 latent frames is the conditioning
    table = rand(batch, 2, 6, DIM, scale=0.3)
    shift, scale, gate = table[:, :, 0], table[:, :, 1], table[:, :, 2]
    angles = rand(1, tokens, DIM // 2, dt=torch.float32, scale=3.0)
    cos = (angles.cos() if device != "meta" else angles).repeat_interleave(2, dim=-1).expand(batch, -1, -1)
    sin = (angles.sin() if device != "meta" else angles).repeat_interleave(2, dim=-1).expand(batch, -1, -1)
    return dict(x=rand(batch, tokens, DIM), y=rand(batch, tokens, DIM), shift=shift, scale=scale, gate=gate,
                segments=(0, n_cond, tokens), q=rand(batch, tokens, DIM), k=rand(batch, tokens, DIM),
                w_q=rand(DIM, scale=0.1) + 1, w_k=rand(DIM, scale=0.1) + 1, cos=cos, sin=sin)


def _ops(s):
    """(name, calls per block, reference call, kernel call, fused bytes)."""
    out_bytes = _nbytes(s["x"])
    cos_once = s["cos"][:1]  # the fused kernel reads broadcast tables once per tile of tokens, for every row
    return [
        ("rmsnorm_modulate", 2,
         lambda: rmsnorm_modulate_reference(s["x"], s["scale"], s["shift"], s["segments"], 1e-6),
         lambda: rmsnorm_modulate(s["x"], s["scale"], s["shift"], s["segments"], 1e-6),
         _nbytes(s["x"]) + out_bytes),
        ("gate_residual", 2,
         lambda: gate_residual_reference(s["x"], s["y"], s["gate"], s["segments"]),
         lambda: gate_residual(s["x"], s["y"], s["gate"], s["segments"]),
         _nbytes(s["x"], s["y"]) + out_bytes),
        ("rope_qk", 1,
         lambda: rope_qk_reference(s["q"], s["k"], s["w_q"], s["w_k"], s["cos"], s["sin"], 1e-5),
         lambda: rope_qk(s["q"], s["k"], s["w_q"], s["w_k"], s["cos"], s["sin"], 1e-5),
         _nbytes(s["q"], s["k"]) * 2 + _nbytes(cos_once) * 2),
    ]


def traffic_table(batch: int, tokens: int, bandwidth: float) -> None:
    s = _step_shapes(batch, tokens, "meta")
    print(f"\nOne pass-2 step of the 13B: batch {batch} x {tokens} tokens x dim {DIM}, {BLOCKS} blocks, bf16 "
          f"(bytes from shapes; time at {bandwidth / 1e12:.2f} TB/s)")
    print(f"{'op':<18}{'calls/step':>11}{'unfused GB':>12}{'fused GB':>10}{'ratio':>8}{'unfused ms':>12}"
          f"{'fused ms':>10}")
    total_unfused = total_fused = 0.0
    for name, per_block, reference, _kernel, fused in _ops(s):
        with _Traffic() as traffic:
            reference()
        calls = per_block * BLOCKS
        unfused_step, fused_step = traffic.bytes * calls, fused * calls
        total_unfused += unfused_step
        total_fused += fused_step
        print(f"{name:<18}{calls:>11}{unfused_step / 1e9:>12.1f}{fused_step / 1e9:>10.1f}"
              f"{unfused_step / fused_step:>7.1f}x{unfused_step / bandwidth * 1e3:>12.0f}"
              f"{fused_step / bandwidth * 1e3:>10.0f}")
    print(f"{'total':<18}{'':>11}{total_unfused / 1e9:>12.1f}{total_fused / 1e9:>10.1f}"
          f"{total_unfused / total_fused:>7.1f}x{total_unfused / bandwidth * 1e3:>12.0f}"
          f"{total_fused / bandwidth * 1e3:>10.0f}")


def correctness_table(device: str) -> None:
    print(f"\nKernels against their references on small shapes ({'compiled' if device == 'cuda' else 'interpreted'}"
          f" on {device}): max |kernel - reference|")
    for dtype in (torch.float32, torch.bfloat16):
        s = _small(device, dtype)
        for name, _per_block, reference, kernel, _fused in _ops(s):
            ref, got = reference(), kernel()
            ref, got = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
            err = max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, ref))
            scale = max(float(b.float().abs().max()) for b in ref)
            print(f"  {name:<18}{str(dtype).replace('torch.', ''):<10}{err:.2e} (values up to {scale:.1f})")


def _small(device, dtype):
    global DIM
    saved, DIM = DIM, 96
    try:
        return _step_shapes(2, 37, device, dtype, seed=1)
    finally:
        DIM = saved


def _cuda_time(fn, repeats: int) -> float:
    if not torch.cuda.is_available():  # --smoke on a CPU: wall time
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats * 1e3
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def cuda_kernel_table(batch: int, tokens: int, repeats: int, device: str = "cuda") -> None:
    s = _step_shapes(batch, tokens, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "the CPU (smoke run, interpreted kernels)"
    print(f"\nMeasured on {name} at batch {batch} x {tokens} tokens, bf16 (ms per call)")
    print(f"{'op':<18}{'torch':>10}{'kernel':>10}{'speed-up':>10}{'kernel GB/s':>13}")
    for name, _per_block, reference, kernel, fused in _ops(s):
        t_ref, t_kernel = _cuda_time(reference, repeats), _cuda_time(kernel, repeats)
        print(f"{name:<18}{t_ref:>10.3f}{t_kernel:>10.3f}{t_ref / t_kernel:>9.2f}x{fused / t_kernel / 1e6:>13.0f}")


def cuda_block_table(batch: int, tokens: int, repeats: int, device: str = "cuda") -> None:
    """One 13B-sized block (random weights), eager/compiled x kernels off/on."""
    from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock

    from ltxserve.engine.attention import choose_attention_backend, install_direct_attention_calls
    from ltxserve.engine.segmented import SegmentedLTXBlock
    from ltxserve.engine.speedups import install_kernels
    from ltxserve.engine.stg import configure_attention

    class _Holder(torch.nn.Module):  # what install_kernels / configure_attention walk
        def __init__(self, block):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([block])

    s = _step_shapes(batch, tokens, device)
    text = torch.randn(batch, 256, DIM, device=device, dtype=torch.bfloat16)
    temb = torch.randn(batch, 2, 6 * DIM, device=device, dtype=torch.bfloat16) * 0.1
    print(f"\nOne 13B block, batch {batch} x {tokens} tokens (ms per call)")
    print(f"{'kernels':<10}{'compiled':<10}{'ms':>10}")
    for compiled in (False, True):
        for kernels_on in (False, True):
            block = LTXVideoTransformerBlock(DIM, HEADS, DIM // HEADS, DIM).to(device, torch.bfloat16).eval()
            block.__class__ = SegmentedLTXBlock
            holder = _Holder(block)
            install_direct_attention_calls(holder)
            install_kernels(holder, kernels_on)
            from kernels.ops import rope_qk

            configure_attention(holder, choose_attention_backend(torch.device(device)),
                                rope_qk if kernels_on else None)
            if compiled:
                block.compile(backend="inductor" if device == "cuda" else "aot_eager")
            start = time.perf_counter()
            with torch.inference_mode():
                call = lambda: block(s["x"], text, temb, (s["cos"], s["sin"]), None, segments=s["segments"])  # noqa
                ms = _cuda_time(call, repeats)
            print(f"{'on' if kernels_on else 'off':<10}{'yes' if compiled else 'no':<10}{ms:>10.2f}"
                  f"{'  (compile + first call ' + format(time.perf_counter() - start, '.0f') + ' s)' if compiled else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=52 * 30 * 16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--bandwidth-tbs", type=float, default=3.35, help="GPU memory bandwidth (H100 SXM: 3.35)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true",
                        help="without CUDA: also run the timing tables on the CPU at a toy size (checks the script)")
    args = parser.parse_args()
    traffic_table(args.batch, args.tokens, args.bandwidth_tbs * 1e12)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    correctness_table(device)
    if device == "cuda":
        cuda_kernel_table(args.batch, args.tokens, args.repeats)
        cuda_block_table(args.batch, args.tokens, args.repeats)
    elif args.smoke:
        global DIM, HEADS
        DIM, HEADS = 64, 4
        cuda_kernel_table(2, 40, 2, device="cpu")
        cuda_block_table(2, 40, 1, device="cpu")
    else:
        print("\nNo CUDA device: kernel and block timings skipped (they need a GPU; --smoke runs them on the CPU "
              "at a toy size).")


if __name__ == "__main__":
    main()
