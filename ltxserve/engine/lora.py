"""LoRAs per request: fetched safely, parsed from the layouts LTX-Video LoRAs are published in, applied unfused.

Application is unfused: a forward hook on each targeted Linear adds scale · (alpha / rank) · (x Aᵀ) Bᵀ to its output.
Removing the hooks restores the base model exactly (its weights are never written), switching LoRAs costs no weight
copy, and several LoRAs stack by adding their terms. Parsed adapters stay in memory in a small LRU; downloaded files
stay on disk, content-addressed, under a size cap with least-recently-used eviction.

Key layouts accepted (one file may use one layout):
- diffusers / PEFT: `transformer.<module>.lora_A.weight` / `lora_B.weight` (optionally `.lora_A.<adapter>.weight`)
- original LTX-Video / ComfyUI: `diffusion_model.<module>.lora_A.weight` / `lora_B.weight`, or `.lora_down.weight` /
  `.lora_up.weight`, with or without `<module>.alpha`; module names in the reference's spelling (patchify_proj,
  adaln_single, q_norm, ...) are mapped to diffusers' as fal's fork of the reference maps `diffusion_model.` keys.
A LoRA any of whose modules does not exist in the loaded transformer, or whose shapes do not fit, is refused whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from ltxserve.config import Settings
from ltxserve.engine.contract import InputError
from ltxserve.engine.net import FetchError, fetch_bytes

_RENAMES = (("patchify_proj", "proj_in"), ("adaln_single", "time_embed"), ("q_norm", "norm_q"), ("k_norm", "norm_k"))
_PREFIXES = ("transformer.", "diffusion_model.", "model.diffusion_model.", "base_model.model.")
_KEY = re.compile(r"^(?P<module>.+?)\.(?:(?P<ab>lora_A|lora_B)(?:\.[A-Za-z0-9_-]+)?\.weight|"
                  r"(?P<ud>lora_down|lora_up)\.weight|(?P<alpha>alpha))$")
_HUB_SCHEME = "hf://"  # how _url_for names a file in a Hugging Face repository
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")


@dataclass(frozen=True)
class LoraLayer:
    down: torch.Tensor  # A: (rank, in_features)
    up: torch.Tensor  # B: (out_features, rank)
    scale: float  # alpha / rank (1 when the file has no alpha)


@dataclass(frozen=True)
class LoraAdapter:
    digest: str
    layers: dict[str, LoraLayer]  # diffusers module name -> factors

    def delta(self, module: str) -> torch.Tensor:
        """The weight change of one module at scale 1: (alpha / rank) · B · A."""
        layer = self.layers[module]
        return layer.scale * (layer.up.float() @ layer.down.float())


def _module_name(raw: str) -> str:
    for prefix in _PREFIXES:
        if raw.startswith(prefix):
            raw = raw[len(prefix):]
            break
    for a, b in _RENAMES:
        raw = raw.replace(a, b)
    return raw


def parse_lora(tensors: dict[str, torch.Tensor], digest: str, *, field: str = "loras") -> LoraAdapter:
    """Group a LoRA file's tensors per module, in any supported layout."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if not m:
            unknown.append(key)
            continue
        role = "alpha" if m["alpha"] else ("down" if (m["ab"] == "lora_A" or m["ud"] == "lora_down") else "up")
        parts.setdefault(_module_name(m["module"]), {})[role] = tensor
    if unknown:
        raise InputError(f"LoRA has keys in no supported layout: {sorted(unknown)[:8]}", loc=("body", field))
    layers = {}
    for module, p in parts.items():
        if "down" not in p or "up" not in p:
            raise InputError(f"LoRA module {module} lacks its {'up' if 'down' in p else 'down'} matrix",
                             loc=("body", field))
        down, up = p["down"], p["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise InputError(f"LoRA module {module}: factor shapes {tuple(up.shape)} x {tuple(down.shape)} "
                             "do not chain", loc=("body", field))
        rank = down.shape[0]
        scale = float(p["alpha"]) / rank if "alpha" in p else 1.0
        layers[module] = LoraLayer(down=down, up=up, scale=scale)
    if not layers:
        raise InputError("LoRA file holds no LoRA weights", loc=("body", field))
    return LoraAdapter(digest=digest, layers=layers)


def check_against(adapter: LoraAdapter, transformer: torch.nn.Module, *, field: str = "loras") -> None:
    """Every module must exist as a Linear of matching shape; otherwise nothing is applied."""
    modules = dict(transformer.named_modules())
    missing = sorted(m for m in adapter.layers if not isinstance(modules.get(m), torch.nn.Linear))
    if missing:
        raise InputError(f"LoRA does not match this model: {len(missing)} modules not found, e.g. {missing[:6]}",
                         loc=("body", field))
    for name, layer in adapter.layers.items():
        linear = modules[name]
        if layer.down.shape[1] != linear.in_features or layer.up.shape[0] != linear.out_features:
            raise InputError(f"LoRA module {name} is {layer.up.shape[0]}x{layer.down.shape[1]}, the model's is "
                             f"{linear.out_features}x{linear.in_features}", loc=("body", field))


class _Term:
    """One LoRA's factors on one Linear, in the compute dtype on the execution device. Moved once when applied; if
    the module runs elsewhere after all (its input arrives on another device or in another dtype), the factors
    follow it there, once."""

    def __init__(self, layer: LoraLayer, strength: float, device: torch.device, dtype: torch.dtype):
        self._layer = layer
        self.scale = strength * layer.scale
        self._place(device, dtype)

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        self.down = self._layer.down.to(device=device, dtype=dtype)
        self.up = self._layer.up.to(device=device, dtype=dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.down.device != x.device or self.down.dtype != x.dtype:
            self._place(x.device, x.dtype)
        return self.scale * ((x @ self.down.T) @ self.up.T)


@contextmanager
def applied(transformer: torch.nn.Module, adapters: list[tuple[LoraAdapter, float]], *,
            device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Add the LoRAs' terms to the targeted Linears for the duration of the block; the weights are untouched.

    `device` and `dtype` are where the transformer computes (the execution device and the compute dtype). They are
    not read from the weights: under offloading the weights sit on the host or on `meta` between calls, and fp8
    weights are not the compute dtype."""
    modules = dict(transformer.named_modules())
    device = torch.device(device) if device is not None else _first_real_device(transformer)
    dtype = dtype or _compute_dtype(transformer)
    per_module: dict[str, list[_Term]] = {}
    for adapter, strength in adapters:
        for name, layer in adapter.layers.items():
            per_module.setdefault(name, []).append(_Term(layer, strength, device, dtype))
    handles = []
    for name, terms in per_module.items():
        def hook(_module, inputs, output, terms=terms):
            x = inputs[0]
            for term in terms:
                output = output + term(x)
            return output

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _first_real_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype the module computes in: that of its first floating, non-fp8 parameter (norm tables, biases)."""
    for p in module.parameters():
        if p.is_floating_point() and p.element_size() > 1:
            return p.dtype
    return torch.float32


class LoraStore:
    """Finds LoRA files (URL, Hugging Face repo, allowed local folder), caches them, parses them once."""

    def __init__(self, settings: Settings, memory_slots: int = 8):
        self.settings = settings
        self.cache_dir = settings.data_dir / "lora-cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._parsed: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._by_source: dict[str, str] = {}
        self._slots = memory_slots
        self._lock = threading.Lock()

    # --- sources ------------------------------------------------------------------------------------------------
    def _url_for(self, path: str, weight_name: str | None) -> str | None:
        """An http(s) URL as given, or `hf://REPO@REVISION#FILE` for a Hugging Face repository (fetched by
        huggingface_hub: HF_TOKEN, HF_ENDPOINT mirrors, resumed transfers, offline mode); None for a local path."""
        if path.startswith(("http://", "https://")):
            return path
        if _HF_REPO.match(path) and not Path(path).exists():
            repo, _, revision = path.partition("@")
            if not weight_name:
                raise InputError(f"LoRA {path}: give weight_name (the .safetensors file in the repository)",
                                 loc=("body", "loras"))
            return f"{_HUB_SCHEME}{repo}@{revision or 'main'}#{weight_name}"
        return None

    def _local(self, path: str, weight_name: str | None) -> Path:
        candidate = Path(path).expanduser()
        if weight_name:
            candidate = candidate / weight_name
        resolved = candidate.resolve()
        allowed = [Path(d).expanduser().resolve() for d in self.settings.lora_dirs]
        if not any(resolved.is_relative_to(d) for d in allowed):
            raise InputError(f"LoRA path {path} is not under an allowed LoRA folder (settings: lora_dirs)",
                             loc=("body", "loras"))
        if not resolved.is_file():
            raise InputError(f"LoRA file {resolved} does not exist", loc=("body", "loras"))
        return resolved

    def _index(self, update: dict[str, str] | None = None, drop: set[str] | None = None) -> dict[str, str]:
        """The source -> content digest index of the disk cache. Updates are read-modify-write under an
        inter-process lock and land atomically (temp file + rename), so workers sharing the cache never lose or
        tear an entry; plain reads need no lock."""
        index_path = self.cache_dir / "urls.json"

        def read() -> dict[str, str]:
            try:
                return json.loads(index_path.read_text())
            except (FileNotFoundError, ValueError):
                return {}

        if update is None and drop is None:
            return read()
        from filelock import FileLock

        with FileLock(str(self.cache_dir / ".urls.json.lock")):
            index = read()
            index.update(update or {})
            for digest in drop or ():
                index = {k: v for k, v in index.items() if v != digest}
            fd, tmp = tempfile.mkstemp(prefix=".urls.", dir=self.cache_dir)
            with os.fdopen(fd, "w") as fh:
                json.dump(index, fh)
            os.replace(tmp, index_path)
            return index

    def _fetch(self, url: str) -> Path:
        digest = self._index().get(url)
        if digest and (self.cache_dir / f"{digest}.safetensors").exists():
            path = self.cache_dir / f"{digest}.safetensors"
            os.utime(path)  # recently used
            return path
        if url.startswith(_HUB_SCHEME):
            digest, path = self._fetch_from_hub(url)
        else:
            try:
                data = fetch_bytes(url, self.settings, max_bytes=self.settings.lora_max_bytes)
            except FetchError as exc:
                raise InputError(f"Could not fetch LoRA {url}: {exc}", loc=("body", "loras")) from None
            digest = hashlib.sha256(data).hexdigest()
            path = self.cache_dir / f"{digest}.safetensors"
            fd, tmp = tempfile.mkstemp(prefix=".lora.", dir=self.cache_dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        self._index(update={url: digest})
        self._evict()
        return path

    def _fetch_from_hub(self, url: str) -> tuple[str, Path]:
        """hf_hub_download into a staging folder of the cache (one process per file at a time), size-checked from
        the Hub's metadata before any byte moves, then hashed from disk and moved to its content address."""
        from filelock import FileLock
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        from ltxserve.weights.store import sha256_file

        repo_at_revision, _, filename = url.removeprefix(_HUB_SCHEME).partition("#")
        repo, _, revision = repo_at_revision.partition("@")
        staging = self.cache_dir / "hub" / repo.replace("/", "--") / revision
        staging.mkdir(parents=True, exist_ok=True)
        kwargs = dict(revision=revision, endpoint=self.settings.weights_base_url, token=self.settings.hf_token)
        where = f"{repo}@{revision} {filename}"
        lock_name = hashlib.sha256(url.encode()).hexdigest()[:16]
        try:
            with FileLock(str(self.cache_dir / f".{lock_name}.lock")):
                digest = self._index().get(url)  # another process may have fetched it while we waited
                if digest and (self.cache_dir / f"{digest}.safetensors").exists():
                    return digest, self.cache_dir / f"{digest}.safetensors"
                info = hf_hub_download(repo, filename, dry_run=True, **kwargs)
                if info.file_size is not None and info.file_size > self.settings.lora_max_bytes:
                    raise InputError(f"LoRA {where} is larger than {self.settings.lora_max_bytes} bytes",
                                     loc=("body", "loras"))
                got = Path(hf_hub_download(repo, filename, local_dir=staging, **kwargs))
                digest = sha256_file(got)
                path = self.cache_dir / f"{digest}.safetensors"
                os.replace(got, path)
                return digest, path
        except InputError:
            raise
        except OfflineModeIsEnabled:
            raise InputError(f"Could not fetch LoRA {where}: offline mode (HF_HUB_OFFLINE) is on",
                             loc=("body", "loras")) from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise InputError(f"Could not fetch LoRA {where}: the Hub answered HTTP {status}",
                             loc=("body", "loras")) from None
        except (OSError, ValueError) as exc:
            raise InputError(f"Could not fetch LoRA {where}: {type(exc).__name__}", loc=("body", "loras")) from None

    def _evict(self) -> None:
        from filelock import FileLock

        with FileLock(str(self.cache_dir / ".evict.lock")):
            files = sorted(self.cache_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            gone = set()
            while files and total > self.settings.lora_cache_bytes:
                oldest = files.pop(0)
                total -= oldest.stat().st_size
                oldest.unlink(missing_ok=True)
                gone.add(oldest.stem)
        if gone:
            self._index(drop=gone)

    # --- loading ------------------------------------------------------------------------------------------------
    def load(self, path: str, weight_name: str | None, transformer: torch.nn.Module) -> LoraAdapter:
        url = self._url_for(path, weight_name)
        source = url or str(self._local(path, weight_name))
        if not url:
            stat = Path(source).stat()
            source = f"{source}:{stat.st_size}:{stat.st_mtime_ns}"  # a changed local file is read again
        with self._lock:  # a recently used LoRA costs no file I/O
            digest = self._by_source.get(source)
            if digest in self._parsed:
                self._parsed.move_to_end(digest)
                return self._parsed[digest]
        file = self._fetch(url) if url else self._local(path, weight_name)
        if file.stat().st_size > self.settings.lora_max_bytes:
            raise InputError(f"LoRA {path} is larger than {self.settings.lora_max_bytes} bytes", loc=("body", "loras"))
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self._parsed:
                self._by_source[source] = digest
                self._parsed.move_to_end(digest)
                return self._parsed[digest]
        try:
            tensors = load_safetensors(data)  # safetensors only: never unpickle
        except (SafetensorError, ValueError, OSError) as exc:
            raise InputError(f"LoRA {path} is not a readable .safetensors file ({exc})", loc=("body", "loras")) from None
        adapter = parse_lora(tensors, digest)
        check_against(adapter, transformer)
        with self._lock:
            self._by_source[source] = digest
            self._parsed[digest] = adapter
            while len(self._parsed) > self._slots:
                self._parsed.popitem(last=False)
        return adapter

