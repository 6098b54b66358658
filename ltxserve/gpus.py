"""Which NVIDIA GPUs this machine has, asked of NVML (the driver's own library, via nvidia-ml-py).

The API process uses this to decide how many workers to start and must never load torch (about 570 MB and a CUDA
context for nothing); the workers, which do load torch, see only the GPU they were given.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ltxserve.gpus")


def nvidia_gpu_indices() -> list[str]:
    """NVML device indices as strings ("0", "1", ...); [] without a driver, without NVML, or on any NVML error."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML unavailable: %s", exc)
        return []
    try:
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:
        log.warning("NVML could not count GPUs: %s", exc)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
