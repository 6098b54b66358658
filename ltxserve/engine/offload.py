"""Apply a memory `Placement` to loaded components, on an execution device given as a parameter.

- ``gpu``: every component moved to the device once.
- ``offload``: the components named in `placement.resident` are moved to the device once and stay; every other
  component (typically only the T5 encoder) lives in host memory and visits the device for its stage, one visitor at
  a time. A visitor's weights are kept in host memory (pinned on CUDA, so the copy in is asynchronous) and are never
  copied back: inference never writes them, so leaving the device is dropping the device copy.
- ``sequential``: diffusers' group offloading, block by block, for the transformer, T5 and the VAE (with a CUDA
  stream prefetching the next block while the current one runs, when the device is a GPU); the small upsampler stays
  resident.

The execution device is a parameter everywhere so that the CPU can stand in for the GPU in tests: the same hooks,
moves and group offloading run, with "cpu" as the execution device.

fp8 is not applied here: it changes the transformer's modules, so it happens at load (`engine/fp8.py`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ltxserve.engine.placement import Placement, PlacementError, RequestSize, count_model_sizes, plan_placement

Mover = Callable[[nn.Module, torch.device], None]
COMPONENT_NAMES = ("text_encoder", "transformer", "latent_upsampler", "vae")


class HostCopies:
    """Moves a module between its host copy and the execution device without ever copying back.

    The first time, the module's parameters and buffers (on the host) become the host copy, pinned when the device
    is a GPU; `to_device` replaces each tensor's data by a device copy (asynchronous from pinned memory), `to_host`
    points it back at the host copy, freeing the device memory."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.device = device
        pin = device.type == "cuda"
        self.tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        for t in list(module.parameters()) + list(module.buffers()):
            host = t.data if t.device.type == "cpu" else t.data.cpu()
            if pin and not host.is_pinned():
                host = host.pin_memory()
            t.data = host
            self.tensors.append((t, host))

    def to_device(self) -> None:
        for t, host in self.tensors:
            t.data = host.to(self.device, non_blocking=True)

    def to_host(self) -> None:
        for t, host in self.tensors:
            t.data = host


class ModelOffloader:
    """Keeps the resident components on the execution device and at most one visitor with them, swapping visitors
    on first use (a forward pre-hook on each visitor, or on its `triggers`)."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        device: torch.device | str,
        offload_device: torch.device | str = "cpu",
        move: Mover | None = None,
        triggers: dict[str, list[nn.Module]] | None = None,
        resident: tuple[str, ...] = (),
    ) -> None:
        self.modules = modules
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.resident = tuple(name for name in resident if name in modules)
        self._move = move
        self._copies: dict[str, HostCopies] = {}
        self.active: str | None = None
        self.moves: list[tuple[str, str]] = []  # (component, "device" | "host"): what happened, for logs and tests
        self._handles = []
        for name in self.resident:
            self._place(name, on_device=True)
            # a resident component starting work sends the visitor home (T5 leaves as the transformer starts)
            self._handles.append(modules[name].register_forward_pre_hook(lambda *_: self.release()))
        for name, module in modules.items():
            if name in self.resident:
                continue
            if move is None:
                self._copies[name] = HostCopies(module, self.device)
            for trigger in (triggers or {}).get(name, [module]):
                self._handles.append(trigger.register_forward_pre_hook(self._hook_for(name)))

    def _hook_for(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any) -> None:
            self.activate(name)

        return hook

    def _place(self, name: str, on_device: bool) -> None:
        self.moves.append((name, "device" if on_device else "host"))
        if self._move is not None:
            self._move(self.modules[name], self.device if on_device else self.offload_device)
        elif name in self._copies:
            (self._copies[name].to_device if on_device else self._copies[name].to_host)()
        else:
            self.modules[name].to(self.device)

    def activate(self, name: str) -> None:
        if self.active == name or name in self.resident:
            return
        if self.active is not None:
            self._place(self.active, on_device=False)
        self._place(name, on_device=True)
        self.active = name

    def release(self) -> None:
        """Send the current visitor back (e.g. after a job, to leave room for the next job's first stage)."""
        if self.active is not None:
            self._place(self.active, on_device=False)
            self.active = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _group_offload(module: nn.Module, device: torch.device) -> None:
    from diffusers.hooks import apply_group_offloading

    stream = device.type == "cuda"  # prefetch the next block on a side stream while this one runs
    apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1, non_blocking=stream,
                           use_stream=stream, record_stream=stream, low_cpu_mem_usage=False)


def apply_placement(components: Any, placement: Placement, device: torch.device | str) -> ModelOffloader | None:
    """Arrange `components` (an LTXComponents) as `placement` says, executing on `device`. Returns the offloader for
    ``offload`` mode. Components must be on the host (or already on `device`) when called."""
    device = torch.device(device)
    modules: dict[str, nn.Module] = {name: getattr(components, name) for name in COMPONENT_NAMES}
    if placement.vae_decode == "tiled":
        components.vae.enable_tiling()
    components.device = device

    if placement.memory == "gpu":
        for module in modules.values():
            module.to(device)
        return None
    if placement.memory == "offload":
        triggers = {"vae": [components.vae, components.vae.encoder, components.vae.decoder]}
        resident = tuple(getattr(placement, "resident", ()) or ())
        return ModelOffloader(modules, device, triggers=triggers, resident=resident)
    if placement.memory == "sequential":
        # Group offloading hooks the forward of the module it is applied to and groups that module's ModuleList
        # children. So it goes where the calls and the block lists are: the transformer (transformer_blocks), T5's
        # stack (encoder.block; T5EncoderModel.forward calls it), and the VAE's encoder and decoder (vae.encode /
        # vae.decode call them, never vae.forward).
        for module in (components.transformer, components.text_encoder.encoder, components.vae.encoder,
                       components.vae.decoder):
            _group_offload(module, device)
        for name, tensor in _unhooked_vae_tensors(components.vae):
            tensor.data = tensor.data.to(device)  # the VAE's own statistics, outside encoder and decoder
        modules["latent_upsampler"].to(device)
        return None
    raise ValueError(f"unknown memory mode {placement.memory!r}")


def _unhooked_vae_tensors(vae: nn.Module) -> list[tuple[str, torch.Tensor]]:
    inside = {id(t) for part in (vae.encoder, vae.decoder) for t in list(part.parameters()) + list(part.buffers())}
    return [(n, t) for n, t in list(vae.named_parameters()) + list(vae.named_buffers()) if id(t) not in inside]


def plan_for_this_gpu(
    memory: str = "auto", dtype: str = "auto", request: RequestSize | None = None, device_index: int = 0
) -> Placement:
    """The placement for CUDA device `device_index` as it is now (free memory read from the driver)."""
    if not torch.cuda.is_available():
        raise PlacementError("no CUDA GPU: placement applies to the 13B model on a GPU (the CPU runs the tiny model)")
    free_bytes, _total = torch.cuda.mem_get_info(device_index)
    return plan_placement(free_bytes, count_model_sizes(), request or RequestSize(), memory=memory, dtype=dtype)
