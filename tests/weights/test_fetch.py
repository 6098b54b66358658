"""`weights pull` against a fake Hub on 127.0.0.1 (huggingface_hub's own client talks to it): confirmation at the
pinned revision, recording of the publisher's values, resumed transfers, verification, the inter-process lock."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from ltxserve.weights.fetch import FetchError, pull_lock, pull_weights
from ltxserve.weights.lock import UNRESOLVED_REVISION, LockError, load_lock
from ltxserve.weights.store import FileState, verify_weights
from tests.weights.conftest import REVISION, git_blob_id, sha256

pytestmark = pytest.mark.timeout(120)


def _pull(tiny, hub, weights_dir: Path, **kwargs):
    return pull_weights(tiny.lock, weights_dir, base_url=hub.base_url, **kwargs)


def _gets(hub, path_suffix: str) -> list[dict]:
    return [r for r in hub.requests if r["method"] == "GET" and r["path"].endswith(path_suffix)]


def test_pull_confirms_and_fetches_every_file_at_the_pinned_revision(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    said: list[str] = []
    result = _pull(tiny_weights, hub_with_tiny, weights_dir, log=said.append)

    assert result.report.ok and result.confirmed
    assert (weights_dir / "ltxv-tiny.safetensors").read_bytes() == tiny_weights.contents["model.safetensors"]
    assert (weights_dir / "text_encoder/text_encoder/config.json").read_bytes() == tiny_weights.contents[
        "text_encoder/config.json"
    ]
    api = [r["path"] for r in hub_with_tiny.requests if r["method"] == "POST"]
    assert api == [f"/api/models/acme/tiny-model/paths-info/{REVISION}"] * 2  # one per component
    files = [r["path"] for r in hub_with_tiny.requests if r["method"] == "GET"]
    assert len(files) == 3 and all(f"/resolve/{REVISION}/" in p for p in files)
    assert not any("/main/" in r["path"] for r in hub_with_tiny.requests)
    assert not (weights_dir / ".ltxserve" / "download").exists()  # staging is gone once everything is in place


def test_publisher_values_are_recorded_verified_and_printed(tiny_weights, hub_with_tiny, tmp_path):
    said: list[str] = []
    result = _pull(tiny_weights, hub_with_tiny, tmp_path / "w", log=said.append)

    te = result.lock.component("text_encoder")
    shard = next(f for f in te.files if f.dest.endswith("model.safetensors"))
    assert shard.size == 120_000 and shard.verified and "LFS metadata" in shard.sha256_source
    # The small config.json has no LFS hash on the Hub: its sha256 is computed and its git blob id checked.
    config = next(f for f in te.files if f.dest.endswith("config.json"))
    data = tiny_weights.contents["text_encoder/config.json"]
    assert config.sha256 == sha256(data) and config.size == len(data) and config.verified
    assert git_blob_id(data) in config.sha256_source
    assert any("recorded from the Hub" in s and "text_encoder/model.safetensors" in s and "120000" in s for s in said)
    assert any("recorded text_encoder/text_encoder/config.json" in s and sha256(data) in s for s in said)


def test_an_unconfirmed_hash_is_replaced_by_the_publishers(tiny_weights, hub_with_tiny, tmp_path):
    comp = tiny_weights.lock.component("checkpoint")
    guessed = replace(comp.files[0], sha256="ab" * 32, size=None, verified=False)
    lock = replace(tiny_weights.lock, components=(replace(comp, files=(guessed,)),))
    said: list[str] = []
    result = pull_weights(lock, tmp_path / "w", base_url=hub_with_tiny.base_url, log=said.append)
    [f] = result.lock.component("checkpoint").files
    assert f.sha256 == sha256(tiny_weights.contents["model.safetensors"]) and f.verified
    assert any("replaces the unconfirmed abababababab" in s for s in said)


def test_a_confirmed_hash_that_the_hub_contradicts_stops_the_pull(tiny_weights, hub_with_tiny, tmp_path):
    comp = tiny_weights.lock.component("checkpoint")
    pinned = replace(comp.files[0], sha256="cd" * 32, verified=True)
    lock = replace(tiny_weights.lock, components=(replace(comp, files=(pinned,)),))
    with pytest.raises(FetchError, match="differs from the Hub's"):
        pull_weights(lock, tmp_path / "w", base_url=hub_with_tiny.base_url)
    assert _gets(hub_with_tiny, "model.safetensors") == []  # refused before any byte moved


def test_bytes_that_do_not_match_the_published_hash_are_discarded(tiny_weights, hub_with_tiny, tmp_path):
    url = f"/{tiny_weights.repo}/resolve/{REVISION}/model.safetensors"
    hub_with_tiny.published_sha256[url] = "ef" * 32  # the API says one thing, the file server sends another
    weights_dir = tmp_path / "w"
    with pytest.raises(FetchError, match="sha256"):
        _pull(tiny_weights, hub_with_tiny, weights_dir, components=["checkpoint"])
    assert not (weights_dir / "ltxv-tiny.safetensors").exists()


def test_a_file_missing_at_the_pinned_revision_is_named(tiny_weights, hub_with_tiny, tmp_path):
    del hub_with_tiny.files[f"/{tiny_weights.repo}/resolve/{REVISION}/text_encoder/config.json"]
    with pytest.raises(FetchError, match="text_encoder/config.json does not exist at the pinned revision"):
        _pull(tiny_weights, hub_with_tiny, tmp_path / "w")


def test_an_unknown_revision_is_a_clear_404(tiny_weights, fake_hub, tmp_path):
    with pytest.raises(FetchError, match="not found"):
        pull_weights(tiny_weights.lock, tmp_path / "w", base_url=fake_hub.base_url, components=["checkpoint"])


def test_cut_connection_resumes_with_range(tiny_weights, hub_with_tiny, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    # huggingface_hub writes in chunks (10 MB by default) and resumes from the bytes written; small chunks let a
    # 300 kB test file show it.
    monkeypatch.setattr(hub_constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    model_url = f"/{tiny_weights.repo}/resolve/{REVISION}/model.safetensors"
    hub_with_tiny.cut_after[model_url] = 100_000
    weights_dir = tmp_path / "w"
    try:
        _pull(tiny_weights, hub_with_tiny, weights_dir, components=["checkpoint"])
    except FetchError:  # huggingface_hub may give up on this call; the next pull resumes
        _pull(tiny_weights, hub_with_tiny, weights_dir, components=["checkpoint"])

    assert (weights_dir / "ltxv-tiny.safetensors").read_bytes() == tiny_weights.contents["model.safetensors"]
    ranges = [r["range"] for r in _gets(hub_with_tiny, f"/resolve/{REVISION}/model.safetensors")]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_from = int(ranges[1].removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_from <= 100_000  # continued from the bytes already on disk


def test_unresolved_revision_is_refused_before_any_request(tiny_weights, hub_with_tiny, tmp_path):
    comp = replace(tiny_weights.lock.components[0], revision=UNRESOLVED_REVISION)
    lock = replace(tiny_weights.lock, components=(comp,) + tiny_weights.lock.components[1:])
    with pytest.raises(LockError, match="no pinned revision"):
        pull_weights(lock, tmp_path / "w", base_url=hub_with_tiny.base_url)
    assert hub_with_tiny.requests == []


def test_verified_files_are_confirmed_but_not_downloaded_again(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    first = _pull(tiny_weights, hub_with_tiny, weights_dir)
    gets = len(_gets(hub_with_tiny, ""))
    second = pull_weights(first.lock, weights_dir, base_url=hub_with_tiny.base_url)
    assert len(_gets(hub_with_tiny, "")) == gets and second.downloaded == [] and len(second.already_present) == 3
    assert second.confirmed


def test_a_server_start_with_the_weights_in_place_sends_nothing(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    first = _pull(tiny_weights, hub_with_tiny, weights_dir)
    count = len(hub_with_tiny.requests)
    again = pull_weights(first.lock, weights_dir, base_url=hub_with_tiny.base_url, confirm="when-downloading")
    assert again.report.ok and not again.confirmed and len(hub_with_tiny.requests) == count


def test_offline_mode_verifies_what_is_there_and_refuses_to_download(tiny_weights, hub_with_tiny, tmp_path,
                                                                      monkeypatch):
    import huggingface_hub.constants as hub_constants

    weights_dir = tmp_path / "w"
    first = _pull(tiny_weights, hub_with_tiny, weights_dir)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    count = len(hub_with_tiny.requests)
    said: list[str] = []
    assert pull_weights(first.lock, weights_dir, base_url=hub_with_tiny.base_url, log=said.append).report.ok
    assert any("offline mode" in s for s in said) and len(hub_with_tiny.requests) == count
    (weights_dir / "ltxv-tiny.safetensors").unlink()
    with pytest.raises(FetchError, match="offline mode"):
        pull_weights(first.lock, weights_dir, base_url=hub_with_tiny.base_url)


def test_token_goes_to_the_hub(tiny_weights, hub_with_tiny, tmp_path):
    _pull(tiny_weights, hub_with_tiny, tmp_path / "w", token="hf_secret", components=["checkpoint"])
    assert {r["auth"] for r in hub_with_tiny.requests} == {"Bearer hf_secret"}


def test_one_process_pulls_while_another_waits_then_verifies(tiny_weights, hub_with_tiny, tmp_path):
    """Two pullers on one folder (separate file-lock handles, as two workers have): the second waits for the
    lock, then finds every file in place; each file crosses the network once."""
    weights_dir = tmp_path / "w"
    model_url = f"/{tiny_weights.repo}/resolve/{REVISION}/model.safetensors"
    hub_with_tiny.gates[model_url] = release = threading.Event()
    hub_with_tiny.serving[model_url] = first_is_downloading = threading.Event()
    results: dict[str, object] = {}
    second_waits = threading.Event()

    def pull(name: str, log) -> None:
        try:
            results[name] = _pull(tiny_weights, hub_with_tiny, weights_dir, log=log)
        except Exception as exc:  # surfaced by the asserts below
            results[name] = exc

    first = threading.Thread(target=pull, args=("first", lambda s: None))
    first.start()
    assert first_is_downloading.wait(30)
    second = threading.Thread(target=pull, args=("second", lambda s: "another process" in s and second_waits.set()))
    second.start()
    assert second_waits.wait(30), "the second puller did not wait for the lock"
    release.set()
    first.join(60)
    second.join(60)
    assert results["first"].report.ok and results["second"].report.ok, results
    assert results["second"].downloaded == [] and len(results["second"].already_present) == 3
    for path in tiny_weights.contents:  # every file crossed the network exactly once
        assert len(_gets(hub_with_tiny, f"/resolve/{REVISION}/{path}")) == 1, path
    lock = pull_lock(weights_dir)
    lock.acquire(timeout=1)  # released by both
    lock.release()


def test_pull_leaves_a_folder_that_verifies_in_full(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    result = _pull(tiny_weights, hub_with_tiny, weights_dir)
    report = verify_weights(result.lock, weights_dir, quick=False)
    assert [s.state for s in report.statuses] == [FileState.OK] * 3


def test_weights_pull_command_writes_and_prints_what_it_recorded(tiny_weights, hub_with_tiny, tmp_path):
    import argparse

    from ltxserve.weights.cli import add_weights_arguments, weights_main

    parser = argparse.ArgumentParser()
    add_weights_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["weights", "pull", "--weights-dir", str(tmp_path / "w"), "--lock",
                              str(tiny_weights.lock_path), "--base-url", hub_with_tiny.base_url, "--no-progress"])
    out: list[str] = []
    assert weights_main(args, out=out.append) == 0
    written = load_lock(tiny_weights.lock_path)
    assert all(f.verified for c in written.components for f in c.files)
    assert any("recorded from the Hub" in line for line in out)
    assert any(f"updated {tiny_weights.lock_path}" in line for line in out)
