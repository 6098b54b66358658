"""LoRAs from a Hugging Face repository go through huggingface_hub (token, mirror endpoint, size check first) into
the content-addressed cache, whose source index several processes update without losing entries."""

from __future__ import annotations

import threading

import pytest

from ltxserve.config import Settings
from ltxserve.engine.contract import InputError
from ltxserve.engine.lora import LoraStore
from tests.weights.conftest import fake_hub, sha256  # noqa: F401 - the fake Hub fixture on 127.0.0.1

REV = "fedcba9876543210fedcba9876543210fedcba98"
DATA = b"\x00" * 70_000 + b"lora-bytes"


@pytest.fixture
def hub_store(fake_hub, tmp_path):  # noqa: F811
    fake_hub.add("acme/loras", REV, "style.safetensors", DATA)
    fake_hub.add("acme/loras", "main", "style.safetensors", DATA)
    settings = Settings(data_dir=tmp_path, weights_base_url=fake_hub.base_url, hf_token="hf_lora_token")
    return fake_hub, LoraStore(settings)


def test_a_hub_lora_is_fetched_with_the_token_at_the_revision_and_cached(hub_store):
    hub, store = hub_store
    url = store._url_for(f"acme/loras@{REV}", "style.safetensors")
    path = store._fetch(url)
    assert path.read_bytes() == DATA and path.name == f"{sha256(DATA)}.safetensors"
    gets = [r for r in hub.requests if r["method"] == "GET"]
    assert [r["path"] for r in gets] == [f"/acme/loras/resolve/{REV}/style.safetensors"]
    assert {r["auth"] for r in hub.requests} == {"Bearer hf_lora_token"}
    # A second store (another worker process) finds it through the shared index: no transfer.
    again = LoraStore(store.settings)._fetch(url)
    assert again == path and len([r for r in hub.requests if r["method"] == "GET"]) == 1


def test_a_hub_lora_over_the_size_limit_is_refused_before_any_byte_moves(hub_store):
    hub, store = hub_store
    store.settings = store.settings.model_copy(update={"lora_max_bytes": 1000})
    with pytest.raises(InputError, match="larger than 1000 bytes"):
        store._fetch(store._url_for("acme/loras", "style.safetensors"))
    assert not [r for r in hub.requests if r["method"] == "GET"]


def test_a_missing_hub_file_is_a_clear_input_error(hub_store):
    _, store = hub_store
    with pytest.raises(InputError, match="acme/loras@main nope.safetensors"):
        store._fetch(store._url_for("acme/loras", "nope.safetensors"))


def test_concurrent_index_updates_keep_every_entry(hub_store):
    _, store = hub_store
    start = threading.Barrier(16)

    def add(i: int) -> None:
        start.wait(10)
        for j in range(5):
            store._index(update={f"https://example.org/{i}/{j}": f"{i:02d}{j:02d}"})

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(store._index()) == 16 * 5
