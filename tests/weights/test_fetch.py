"""`weights pull` against a local HTTP server: pinned URLs, resume after a cut connection, verification, recording."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ltxserve.weights.fetch import FetchError, file_url, pull_weights
from ltxserve.weights.lock import UNRESOLVED_REVISION, LockError
from ltxserve.weights.store import FileState, part_path, verify_weights
from tests.weights.conftest import REVISION, sha256

FAST = {"retries": 3, "backoff_seconds": 0.01, "timeout_seconds": 10.0}


def _pull(tiny, hub, weights_dir: Path, **kwargs):
    return pull_weights(tiny.lock, weights_dir, base_url=hub.base_url, **{**FAST, **kwargs})


def test_pull_fetches_every_file_at_the_pinned_revision(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    result = _pull(tiny_weights, hub_with_tiny, weights_dir)

    assert result.report.ok
    assert (weights_dir / "ltxv-tiny.safetensors").read_bytes() == tiny_weights.contents["model.safetensors"]
    assert (weights_dir / "text_encoder/text_encoder/config.json").read_bytes() == tiny_weights.contents[
        "text_encoder/config.json"
    ]
    assert not list(weights_dir.rglob("*.part"))
    requested = [r["path"] for r in hub_with_tiny.requests]
    assert len(requested) == 3
    assert all(f"/resolve/{REVISION}/" in p for p in requested)
    assert not any("/resolve/main/" in p for p in requested)


def test_url_uses_the_exact_revision_and_quotes_the_path():
    url = file_url("https://hub.example/", "org/repo", REVISION, "dir/a b.json")
    assert url == f"https://hub.example/org/repo/resolve/{REVISION}/dir/a%20b.json"


def test_cut_connection_resumes_with_range_and_completes(tiny_weights, hub_with_tiny, tmp_path):
    model_url = f"/{tiny_weights.repo}/resolve/{REVISION}/model.safetensors"
    hub_with_tiny.cut_after[model_url] = 100_000
    weights_dir = tmp_path / "w"

    result = _pull(tiny_weights, hub_with_tiny, weights_dir, workers=1)

    assert result.report.ok
    assert (weights_dir / "ltxv-tiny.safetensors").read_bytes() == tiny_weights.contents["model.safetensors"]
    ranges = [r["range"] for r in hub_with_tiny.requests if r["path"] == model_url]
    assert ranges[0] is None
    assert len(ranges) == 2
    # The second request continued from the bytes already on disk, it did not start over.
    resumed_from = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 100_000


def test_partial_file_from_an_earlier_run_is_resumed(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    target = weights_dir / "ltxv-tiny.safetensors"
    target.parent.mkdir(parents=True)
    part_path(target).write_bytes(tiny_weights.contents["model.safetensors"][:12_345])

    _pull(tiny_weights, hub_with_tiny, weights_dir, components=["checkpoint"])

    assert target.read_bytes() == tiny_weights.contents["model.safetensors"]
    assert hub_with_tiny.requests[0]["range"] == "bytes=12345-"


def test_server_without_range_support_restarts_the_file(tiny_weights, hub_with_tiny, tmp_path):
    hub_with_tiny.honour_range = False
    weights_dir = tmp_path / "w"
    target = weights_dir / "ltxv-tiny.safetensors"
    target.parent.mkdir(parents=True)
    part_path(target).write_bytes(tiny_weights.contents["model.safetensors"][:5000])

    result = _pull(tiny_weights, hub_with_tiny, weights_dir, components=["checkpoint"])

    assert result.report.ok
    assert target.read_bytes() == tiny_weights.contents["model.safetensors"]


def test_corrupted_download_is_refused_and_discarded(tiny_weights, hub_with_tiny, tmp_path):
    url = f"/{tiny_weights.repo}/resolve/{REVISION}/model.safetensors"
    corrupted = bytearray(tiny_weights.contents["model.safetensors"])
    corrupted[1234] ^= 0xFF
    hub_with_tiny.files[url] = bytes(corrupted)
    weights_dir = tmp_path / "w"

    with pytest.raises(FetchError, match="sha256"):
        _pull(tiny_weights, hub_with_tiny, weights_dir, components=["checkpoint"])

    target = weights_dir / "ltxv-tiny.safetensors"
    assert not target.exists()
    assert not part_path(target).exists()


def test_unresolved_revision_is_refused_before_any_request(tiny_weights, hub_with_tiny, tmp_path):
    comp = replace(tiny_weights.lock.components[0], revision=UNRESOLVED_REVISION)
    lock = replace(tiny_weights.lock, components=(comp,) + tiny_weights.lock.components[1:])

    with pytest.raises(LockError, match="no pinned revision"):
        pull_weights(lock, tmp_path / "w", base_url=hub_with_tiny.base_url, **FAST)
    assert hub_with_tiny.requests == []


def test_unknown_hash_is_recorded_on_first_download(tiny_weights, hub_with_tiny, tmp_path):
    result = _pull(tiny_weights, hub_with_tiny, tmp_path / "w")

    config = next(f for f in result.lock.component("text_encoder").files if f.dest.endswith("config.json"))
    expected = tiny_weights.contents["text_encoder/config.json"]
    assert config.sha256 == sha256(expected)
    assert config.size == len(expected)
    assert "ltxserve weights pull" in config.sha256_source
    assert result.recorded == ["text_encoder/text_encoder/config.json"]
    assert not config.verified  # recorded on first use, not confirmed upstream


def test_no_record_refuses_unknown_hashes(tiny_weights, hub_with_tiny, tmp_path):
    with pytest.raises(LockError, match="no sha256"):
        _pull(tiny_weights, hub_with_tiny, tmp_path / "w", record=False)
    assert hub_with_tiny.requests == []


def test_verified_files_are_not_downloaded_again(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    first = _pull(tiny_weights, hub_with_tiny, weights_dir)
    count = len(hub_with_tiny.requests)

    second = pull_weights(first.lock, weights_dir, base_url=hub_with_tiny.base_url, **FAST)

    assert len(hub_with_tiny.requests) == count
    assert len(second.already_present) == 3
    assert second.downloaded == []


def test_wrong_file_on_disk_is_replaced(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    target = weights_dir / "ltxv-tiny.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x" * len(tiny_weights.contents["model.safetensors"]))

    result = _pull(tiny_weights, hub_with_tiny, weights_dir, components=["checkpoint"])

    assert result.downloaded == ["ltxv-tiny.safetensors"]
    assert target.read_bytes() == tiny_weights.contents["model.safetensors"]


def test_missing_upstream_file_reports_404(tiny_weights, fake_hub, tmp_path):
    with pytest.raises(FetchError, match="not found"):
        pull_weights(
            tiny_weights.lock, tmp_path / "w", base_url=fake_hub.base_url, components=["checkpoint"], **FAST
        )


def test_token_is_sent_as_bearer(tiny_weights, hub_with_tiny, tmp_path):
    _pull(tiny_weights, hub_with_tiny, tmp_path / "w", token="hf_secret", components=["checkpoint"])
    assert hub_with_tiny.requests[0]["auth"] == "Bearer hf_secret"


def test_pull_leaves_a_folder_that_verifies_in_full(tiny_weights, hub_with_tiny, tmp_path):
    weights_dir = tmp_path / "w"
    result = _pull(tiny_weights, hub_with_tiny, weights_dir)
    report = verify_weights(result.lock, weights_dir, quick=False)
    assert [s.state for s in report.statuses] == [FileState.OK] * 3
