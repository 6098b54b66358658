"""LoRAs: every key layout gives W + scale·(alpha/rank)·B·A, the base is untouched afterwards, bad files are refused."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save, save_file

from ltxserve.config import Settings
from ltxserve.engine.contract import InputError
from ltxserve.engine.lora import LoraStore, applied, check_against, parse_lora
from ltxserve.engine.pipeline import GenerationInputs, generate_frames
from ltxserve.engine.plan import LTXV_13B_097_DEV, plan_geometry, with_steps

# (diffusers module name, the reference's spelling) — proj_in is `patchify_proj` in LTX-Video's own checkpoints
TARGETS = [("transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_q"),
           ("transformer_blocks.3.ff.net.2", "transformer_blocks.3.ff.net.2"),
           ("proj_in", "patchify_proj")]


def _factors(transformer, rank=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    out = {}
    for name, _ in TARGETS:
        lin = modules[name]
        out[name] = (torch.randn(rank, lin.in_features, generator=g) * 0.3,
                     torch.randn(lin.out_features, rank, generator=g) * 0.3)
    return out


def _layout(factors, layout: str, alpha: float | None) -> dict[str, torch.Tensor]:
    tensors = {}
    for (name, original), (down, up) in zip(TARGETS, factors.values()):
        if layout == "peft":
            prefix, a, b = f"transformer.{name}", "lora_A.weight", "lora_B.weight"
        elif layout == "original_ab":
            prefix, a, b = f"diffusion_model.{original}", "lora_A.weight", "lora_B.weight"
        else:  # original_updown (ComfyUI)
            prefix, a, b = f"diffusion_model.{original}", "lora_down.weight", "lora_up.weight"
        tensors[f"{prefix}.{a}"], tensors[f"{prefix}.{b}"] = down, up
        if alpha is not None:
            tensors[f"{prefix}.alpha"] = torch.tensor(alpha)
    return tensors


@pytest.mark.parametrize("layout", ["peft", "original_ab", "original_updown"])
@pytest.mark.parametrize("alpha", [None, 2.0])
def test_effective_weights_match_the_formula(tiny_components, layout, alpha):
    tr = tiny_components.transformer
    factors = _factors(tr)
    adapter = parse_lora(_layout(factors, layout, alpha), "x")
    check_against(adapter, tr)
    modules = dict(tr.named_modules())
    scale = 0.7
    x_g = torch.Generator().manual_seed(5)
    for name, (down, up) in factors.items():
        lin = modules[name]
        x = torch.randn(3, lin.in_features, generator=x_g)
        rank = down.shape[0]
        w_eff = lin.weight + scale * ((alpha or rank) / rank) * (up @ down)  # by hand
        with torch.inference_mode(), applied(tr, [(adapter, scale)]):
            y = lin(x)
        torch.testing.assert_close(y, x @ w_eff.T + lin.bias, atol=1e-5, rtol=1e-5)
        with torch.inference_mode():
            torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias)  # removed exactly


def test_two_loras_stack(tiny_components):
    tr = tiny_components.transformer
    a = parse_lora(_layout(_factors(tr, seed=1), "peft", None), "a")
    b = parse_lora(_layout(_factors(tr, seed=2), "original_updown", 8.0), "b")
    lin = dict(tr.named_modules())["proj_in"]
    x = torch.randn(2, lin.in_features)
    expected = x @ (lin.weight + 0.5 * a.delta("proj_in") + 2.0 * b.delta("proj_in")).T + lin.bias
    with torch.inference_mode(), applied(tr, [(a, 0.5), (b, 2.0)]):
        torch.testing.assert_close(lin(x), expected, atol=1e-5, rtol=1e-5)


def test_generation_after_a_lora_equals_a_fresh_model(tiny_components):
    cfg = with_steps(LTXV_13B_097_DEV, 4, 1, 4, 2)
    g = torch.Generator().manual_seed(0)
    inputs = GenerationInputs(prompt="p", negative_prompt="n",
                              conditioning_image=torch.rand(1, 3, 1, 64, 96, generator=g) * 2 - 1,
                              geometry=plan_geometry(96, 64, 9, cfg.downscale_factor), frame_rate=24, seed=3)
    before = generate_frames(tiny_components, cfg, inputs)
    adapter = parse_lora(_layout(_factors(tiny_components.transformer), "peft", None), "z")
    with applied(tiny_components.transformer, [(adapter, 1.0)]):
        with_lora = generate_frames(tiny_components, cfg, inputs)
    after = generate_frames(tiny_components, cfg, inputs)
    assert np.array_equal(before, after) and not np.array_equal(before, with_lora)


def test_mismatched_loras_are_refused_by_name(tiny_components):
    tr = tiny_components.transformer
    bad = {"transformer.transformer_blocks.99.attn1.to_q.lora_A.weight": torch.zeros(2, 16),
           "transformer.transformer_blocks.99.attn1.to_q.lora_B.weight": torch.zeros(16, 2)}
    with pytest.raises(InputError, match=r"transformer_blocks\.99\.attn1\.to_q"):
        check_against(parse_lora(bad, "b"), tr)
    wrong_shape = {"transformer.proj_in.lora_A.weight": torch.zeros(2, 7),
                   "transformer.proj_in.lora_B.weight": torch.zeros(16, 2)}
    with pytest.raises(InputError, match="proj_in is 16x7"):
        check_against(parse_lora(wrong_shape, "c"), tr)
    with pytest.raises(InputError, match="no supported layout"):
        parse_lora({"some.other.weight": torch.zeros(2)}, "d")
    with pytest.raises(InputError, match="lacks its up"):
        parse_lora({"transformer.proj_in.lora_A.weight": torch.zeros(2, 16)}, "e")


class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self):
        type(self).hits.append(self.path)
        body = type(self).files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_HEAD(self):  # huggingface_hub asks for a Hub file's metadata first
        body = type(self).files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.send_header("ETag", '"lora"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def lora_server(tiny_components):
    data = save(_layout(_factors(tiny_components.transformer), "original_ab", 4.0))
    _Files.files = {"/x.safetensors": data, "/owner/repo/resolve/main/style.safetensors": data,
                    "/junk.safetensors": b"not a safetensors file at all"}
    _Files.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_sources_url_hub_and_local_with_cache(tiny_components, lora_server, tmp_path):
    local = tmp_path / "loras"
    local.mkdir()
    save_file(_layout(_factors(tiny_components.transformer), "peft", None), local / "mine.safetensors")
    settings = Settings(data_dir=tmp_path / "d", fetch_allow_private_networks=True, weights_base_url=lora_server,
                        lora_dirs=[local])
    store = LoraStore(settings)
    tr = tiny_components.transformer
    a = store.load(lora_server + "/x.safetensors", None, tr)
    assert set(a.layers) == {name for name, _ in TARGETS} and a.layers["proj_in"].scale == 1.0  # alpha 4 / rank 4
    again = LoraStore(settings).load(lora_server + "/x.safetensors", None, tr)  # a new process: disk cache
    assert again.digest == a.digest and _Files.hits.count("/x.safetensors") == 1
    (store.cache_dir / f"{a.digest}.safetensors").unlink()  # a recently used LoRA needs no file at all
    assert store.load(lora_server + "/x.safetensors", None, tr) is a
    hub = store.load("owner/repo", "style.safetensors", tr)
    assert hub.digest == a.digest
    assert store.load(str(local / "mine.safetensors"), None, tr).layers
    with pytest.raises(InputError, match="not under an allowed LoRA folder"):
        store.load(str(tmp_path / "elsewhere.safetensors"), None, tr)
    with pytest.raises(InputError, match="give weight_name"):
        store.load("owner/repo", None, tr)
    with pytest.raises(InputError, match="not a readable .safetensors"):
        store.load(lora_server + "/junk.safetensors", None, tr)
    with pytest.raises(InputError, match="HTTP 404"):
        store.load(lora_server + "/missing.safetensors", None, tr)
    small = LoraStore(settings.model_copy(update={"lora_max_bytes": 100}))
    with pytest.raises(InputError, match="larger than 100"):
        small.load(lora_server + "/owner/repo/resolve/main/style.safetensors", None, tr)


def test_private_network_guard_applies_to_loras(tiny_components, lora_server, tmp_path):
    store = LoraStore(Settings(data_dir=tmp_path))
    with pytest.raises(InputError, match="non-public address"):
        store.load(lora_server + "/x.safetensors", None, tiny_components.transformer)


def test_disk_cache_evicts_least_recently_used(tiny_components, lora_server, tmp_path):
    settings = Settings(data_dir=tmp_path, fetch_allow_private_networks=True)
    store = LoraStore(settings)
    store.load(lora_server + "/x.safetensors", None, tiny_components.transformer)
    size = next(store.cache_dir.glob("*.safetensors")).stat().st_size
    store.settings = settings.model_copy(update={"lora_cache_bytes": size - 1})
    store._evict()
    assert not list(store.cache_dir.glob("*.safetensors"))
