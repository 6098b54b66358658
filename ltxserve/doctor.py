"""`ltxserve doctor`: what this machine has, and what `ltxserve serve` would do on it.

Prints the GPU(s), driver and free memory, whether the pinned weights are present and verified, and the memory
placement the server would choose for a request size. On a machine without a CUDA GPU it says so, says that the
server would run the tiny random-weight model, and shows the placement it would choose on common cards.
It also states the host RAM each placement needs (the weights that wait in host memory for their turn on the GPU:
offload's visitors, every weight in sequential mode) against what the machine has, so a 32 GB desktop knows what
it can run. Exit status 0 means this machine can serve the 13B model now; 1 means it cannot (the output says why).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ltxserve.cli_flags import add_settings_flags, settings_from_args
from ltxserve.config import Settings
from ltxserve.engine.placement import (
    ALL_RESIDENT,
    HOST_PROCESS_BYTES,
    GiB,
    Placement,
    PlacementError,
    RequestSize,
    card_free_bytes,
    count_model_sizes,
    host_weight_bytes,
    plan_placement,
)
from ltxserve.weights.lock import LockError
from ltxserve.weights.provision import load_settings_lock
from ltxserve.weights.store import FileState, verify_weights

REFERENCE_CARDS_GB = (80, 48, 24, 16)
# The placements whose host needs doctor lists: (label, memory, resident).
HOST_ROWS = (
    ("gpu (all resident)", "gpu", ALL_RESIDENT),
    ("offload, T5 visits", "offload", ("transformer", "latent_upsampler", "vae")),
    ("offload, all visit", "offload", ()),
    ("sequential", "sequential", ()),
)


@dataclass(frozen=True)
class HostMemory:
    total_bytes: int
    available_bytes: int


def read_meminfo(path: Path = Path("/proc/meminfo")) -> HostMemory | None:
    """MemTotal and MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[key.strip()] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    if "MemTotal" not in fields:
        return None
    return HostMemory(fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0)))


def host_need_bytes(memory: str, dtype: str, resident: tuple[str, ...], sizes) -> int:
    """Host RAM a placement needs: the weights kept in host memory (pinned for transfers) plus the process."""
    weight_dtype = "bf16" if dtype == "auto" else dtype
    return host_weight_bytes(memory, weight_dtype, resident, sizes) + HOST_PROCESS_BYTES  # type: ignore[arg-type]


def _host_section(host: HostMemory | None, sizes, dtype: str, chosen: Placement | None,
                  out: Callable[[str], None]) -> bool:
    """Print what each placement needs in host RAM; False when the chosen placement does not fit."""
    if host is None:
        out("  host memory: unknown (no /proc/meminfo)")
        return True
    out(f"  this machine: {host.total_bytes / GiB:.1f} GiB RAM, {host.available_bytes / GiB:.1f} GiB available")
    out("  weights are memory-mapped from the checkpoint while loading (the page cache, not a copy); what stays in "
        "host memory is the weights that visit the GPU:")
    for weight_dtype in (("bf16", "fp8") if dtype == "auto" else (dtype,)):
        for label, memory, resident in HOST_ROWS:
            need = host_need_bytes(memory, weight_dtype, resident, sizes)
            verdict = "fits" if need <= host.total_bytes else "needs more RAM than this machine has"
            out(f"  {label + ', ' + weight_dtype:<26} ~{need / GiB:5.1f} GiB: {verdict}")
    if chosen is None:
        return True
    need = host_need_bytes(chosen.memory, chosen.dtype, tuple(chosen.resident), sizes)
    fits = need <= host.total_bytes
    out(f"  the chosen placement ({chosen.memory}) needs ~{need / GiB:.1f} GiB of host RAM: "
        + ("fits" if fits else f"more than this machine's {host.total_bytes / GiB:.1f} GiB"))
    return fits


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]


def probe_gpus() -> list[GpuInfo]:
    """The CUDA devices torch can see, with their free memory now."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        props = torch.cuda.get_device_properties(i)
        gpus.append(GpuInfo(i, props.name, total, free, (props.major, props.minor)))
    return gpus


def driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi, when it is installed."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def add_doctor_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("doctor", help="show the GPU, the weights and the memory plan for this machine")
    add_settings_flags(parser, ("weights_dir", "weights_lock", "memory", "dtype"))
    parser.add_argument("--width", type=int, default=1280, help="request width to plan for (default 1280)")
    parser.add_argument("--height", type=int, default=720, help="request height to plan for (default 720)")
    parser.add_argument("--num-frames", type=int, default=121, help="request frames to plan for (default 121)")
    parser.add_argument("--verify", action="store_true", help="hash the weight files (slow) instead of trusting "
                        "earlier verification")
    parser.set_defaults(func=doctor_main)
    return parser


def _settings(args: argparse.Namespace, settings: Settings | None) -> Settings:
    return settings_from_args(args, base=settings)


def _weights_section(settings: Settings, verify: bool, out: Callable[[str], None]) -> bool:
    try:
        lock, lock_path = load_settings_lock(settings)
    except LockError as exc:
        out(f"  weights.lock: {exc}")
        return False
    out(f"  lock:   {lock_path}")
    out(f"  folder: {Path(settings.weights_dir).resolve()}")
    report = verify_weights(lock, settings.weights_dir, quick=not verify, hash_files=verify)
    for status in report.statuses:
        out(f"  {status.state.value:<26} {status.component}: {status.file.dest}")
    unpinned = [c.name for c in lock.select() if not c.revision_resolved]
    if unpinned:
        out(f"  note: no pinned revision for {', '.join(unpinned)}: `weights pull` refuses them; use "
            "`ltxserve weights pin NAME --latest` (pins the Hub's current commit) or `ltxserve weights import DIR`")
    files = [f for c in lock.select() for f in c.files]
    unconfirmed = sum(1 for f in files if not f.verified)
    if unconfirmed:
        out(f"  {unconfirmed} of {len(files)} lock entries not yet confirmed with the Hub (`ltxserve weights pull` "
            "confirms every file at its pinned revision and records the publisher's sha256 and size)")
    if report.ok:
        out("  all required weights present and verified")
    elif all(s.state in (FileState.OK, FileState.UNCHECKED) for s in report.statuses):
        out("  present; not all verified yet (`ltxserve weights verify`, or the server verifies them at start)")
    else:
        out("  not ready: `ltxserve weights pull` (or `import DIR`) would fetch what is missing")
    return report.ok or all(s.state in (FileState.OK, FileState.UNCHECKED) for s in report.statuses)


def doctor_main(args: argparse.Namespace, settings: Settings | None = None, out: Callable[[str], None] = print) -> int:
    settings = _settings(args, settings)
    request = RequestSize(args.width, args.height, args.num_frames)

    out("ltxserve doctor")
    out(f"  python {platform.python_version()} on {platform.system()} {platform.machine()}")
    try:
        import torch

        out(f"  torch {torch.__version__} (CUDA runtime {torch.version.cuda or 'none'})")
    except ImportError:
        out("  torch is not installed")

    out("\nGPU")
    gpus = probe_gpus()
    if gpus:
        driver = driver_version()
        out(f"  NVIDIA driver {driver or 'unknown (nvidia-smi not found)'}")
        for g in gpus:
            out(f"  cuda:{g.index} {g.name} (sm {g.capability[0]}{g.capability[1]}): "
                f"{g.free_bytes / GiB:.1f} GiB free of {g.total_bytes / GiB:.1f} GiB")
    else:
        out("  no CUDA GPU visible: `ltxserve serve` (--model auto) would serve the TINY random-weight model here;")
        out("  its outputs are noise. The 13B model needs a CUDA GPU.")

    out("\nWeights")
    weights_ok = _weights_section(settings, args.verify, out)

    out(f"\nMemory placement for a {request.width}x{request.height}, {request.num_frames}-frame request "
        f"(--memory {settings.memory}, --dtype {settings.dtype})")
    from ltxserve.engine.safety_checker import describe_placement as describe_safety_checker  # torch: only here

    sizes = count_model_sizes()
    host = read_meminfo()
    host_total = host.total_bytes if host else None
    fits = False
    chosen = None
    if gpus:
        gpu = gpus[0]
        try:
            plan = plan_placement(gpu.free_bytes, sizes, request, memory=settings.memory, dtype=settings.dtype,
                                  host_bytes=host_total)
            out("  " + plan.describe().replace("\n", "\n  "))
            out("  " + describe_safety_checker(plan, sizes.safety_checker_params, settings.safety_checker_frames))
            fits, chosen = True, plan
        except (PlacementError, ValueError) as exc:
            out(f"  {exc}")
    else:
        out("  on this machine: none (no GPU). On common cards it would choose:")
        for gb in REFERENCE_CARDS_GB:
            try:
                plan = plan_placement(
                    card_free_bytes(gb), sizes, request, memory=settings.memory, dtype=settings.dtype
                )
                out(f"  {gb:>3} GB card: {plan.memory}, {plan.dtype} transformer weights, {plan.vae_decode} VAE "
                    f"decode, ~{plan.peak_bytes / GiB:.1f} GiB peak, "
                    f"~{host_need_bytes(plan.memory, plan.dtype, tuple(plan.resident), sizes) / GiB:.0f} GiB host RAM")
            except (PlacementError, ValueError) as exc:
                out(f"  {gb:>3} GB card: {exc}")
        out("  " + describe_safety_checker(None, sizes.safety_checker_params, settings.safety_checker_frames))

    out("\nHost memory")
    host_ok = _host_section(host, sizes, settings.dtype, chosen, out)

    out("\nPrompt enhancer (expand_prompt; optional)")
    _prompt_enhancer_section(settings, sizes, chosen, out)

    ready = bool(gpus) and weights_ok and fits and host_ok
    out("\n" + ("ready to serve the 13B model" if ready else "not ready to serve the 13B model (see above)"))
    return 0 if ready else 1


def _prompt_enhancer_section(settings: Settings, sizes, chosen: Placement | None, out: Callable[[str], None]) -> None:
    """Whether expand_prompt can run (its optional weights), and where the enhancer would compute."""
    from ltxserve.engine.prompt_enhancer import EnhancerUnavailable, check_enhancer_folder
    from ltxserve.engine.prompt_enhancer_plan import count_enhancer_sizes, plan_enhancer
    from ltxserve.engine.prompt_expansion import enhancer_folder

    folder = enhancer_folder(settings, tiny=False)
    try:
        check_enhancer_folder(folder)
        out(f"  weights present in {folder}")
    except EnhancerUnavailable as exc:
        out(f"  not available: {exc}; requests with expand_prompt: true are refused (422), all others are served")
    enhancer = count_enhancer_sizes()
    out(f"  loaded on the first expand_prompt request: {enhancer.weight_bytes() / GiB:.1f} GiB of bf16 weights in host "
        "memory (resident on the GPU only where the plan leaves room for them)")
    if chosen is not None:
        out("  " + plan_enhancer(chosen, sizes, enhancer).describe())
    else:
        for gb in REFERENCE_CARDS_GB:
            try:
                plan = plan_enhancer(plan_placement(card_free_bytes(gb), sizes, RequestSize(), memory=settings.memory,
                                                    dtype=settings.dtype), sizes, enhancer)
                out(f"  {gb:>3} GB card: {plan.run} ({plan.reason})")
            except (PlacementError, ValueError):
                pass

