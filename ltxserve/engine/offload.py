"""Apply a memory `Placement` to loaded components: residency, model-level or sequential offload, fp8, VAE tiling.

- ``gpu``: every component moved to the device once.
- ``offload``: components stay in host memory; a forward pre-hook brings a component to the device when it runs
  and sends the one that ran before back, so only one large component is on the GPU at a time (the text encoder
  leaves it as soon as the transformer starts).
- ``sequential``: accelerate's block-by-block CPU offload for every component.
- ``fp8``: the transformer's weights are stored as float8_e4m3fn and cast to the compute dtype layer by layer
  (diffusers' layerwise casting), which works on any CUDA GPU.
- ``tiled``: the VAE decodes in spatial tiles and frame chunks (diffusers' tiling).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ltxserve.engine.placement import Placement, PlacementError, RequestSize, count_model_sizes, plan_placement

FP8_STORAGE = torch.float8_e4m3fn

Mover = Callable[[nn.Module, torch.device], None]


def _move(module: nn.Module, device: torch.device) -> None:
    module.to(device)


class ModelOffloader:
    """Keeps at most one of the managed components on the execution device, swapping on first use."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        device: torch.device | str,
        offload_device: torch.device | str = "cpu",
        move: Mover = _move,
        triggers: dict[str, list[nn.Module]] | None = None,
    ) -> None:
        self.modules = modules
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self._move = move
        self.active: str | None = None
        self._handles = []
        for name, module in modules.items():
            for trigger in (triggers or {}).get(name, [module]):
                self._handles.append(trigger.register_forward_pre_hook(self._hook_for(name)))

    def _hook_for(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any) -> None:
            self.activate(name)

        return hook

    def activate(self, name: str) -> None:
        if self.active == name:
            return
        if self.active is not None:
            self._move(self.modules[self.active], self.offload_device)
        self._move(self.modules[name], self.device)
        self.active = name

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def apply_placement(components: Any, placement: Placement, device: torch.device | str) -> ModelOffloader | None:
    """Arrange `components` (an LTXComponents) as `placement` says. Returns the offloader for ``offload`` mode."""
    device = torch.device(device)
    modules: dict[str, nn.Module] = {
        "text_encoder": components.text_encoder,
        "transformer": components.transformer,
        "latent_upsampler": components.latent_upsampler,
        "vae": components.vae,
    }
    if placement.dtype == "fp8":
        components.transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=components.dtype)
    if placement.vae_decode == "tiled":
        components.vae.enable_tiling()

    if placement.memory == "gpu":
        for module in modules.values():
            module.to(device)
        return None
    if placement.memory == "offload":
        triggers = {"vae": [components.vae, components.vae.encoder, components.vae.decoder]}
        return ModelOffloader(modules, device, triggers=triggers)
    from accelerate import cpu_offload

    for module in modules.values():
        cpu_offload(module, execution_device=device)
    return None


def plan_for_this_gpu(
    memory: str = "auto", dtype: str = "auto", request: RequestSize | None = None, device_index: int = 0
) -> Placement:
    """The placement for CUDA device `device_index` as it is now (free memory read from the driver)."""
    if not torch.cuda.is_available():
        raise PlacementError("no CUDA GPU: placement applies to the 13B model on a GPU (the CPU runs the tiny model)")
    free_bytes, _total = torch.cuda.mem_get_info(device_index)
    return plan_placement(free_bytes, count_model_sizes(), request or RequestSize(), memory=memory, dtype=dtype)
