"""`weights import DIR`, `verify` (a corrupted byte is caught and refused) and `show`, including the CLI."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from ltxserve.config import Settings
from ltxserve.weights.cli import add_weights_arguments
from ltxserve.weights.lock import load_lock
from ltxserve.weights.provision import WeightsNotReady, ensure_weights
from ltxserve.weights.store import FileState, WeightsError, import_weights, show_weights, verify_weights
from tests.weights.conftest import sha256


def _repo_snapshot(tiny, root: Path) -> Path:
    """The files as a Hub snapshot lays them out (repository paths)."""
    for path, data in tiny.contents.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def _run_cli(argv: list[str], settings: Settings) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="ltxserve")
    add_weights_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    lines: list[str] = []
    code = args.func(args, settings, lines.append)
    return code, "\n".join(lines)


def test_import_from_a_repository_snapshot(tiny_weights, tmp_path):
    source = _repo_snapshot(tiny_weights, tmp_path / "snapshot")
    weights_dir = tmp_path / "w"

    result = import_weights(tiny_weights.lock, source, weights_dir)

    assert result.report.ok
    assert (weights_dir / "ltxv-tiny.safetensors").read_bytes() == tiny_weights.contents["model.safetensors"]
    assert (weights_dir / "text_encoder/text_encoder/model.safetensors").exists()
    assert sorted(result.imported) == sorted(f.dest for c in tiny_weights.lock.components for f in c.files)
    config = next(f for f in result.lock.component("text_encoder").files if f.dest.endswith("config.json"))
    assert config.sha256 == sha256(tiny_weights.contents["text_encoder/config.json"])
    assert "import" in config.sha256_source


def test_import_from_another_weights_folder_skips_what_is_already_there(tiny_weights, tmp_path):
    first = import_weights(tiny_weights.lock, _repo_snapshot(tiny_weights, tmp_path / "snap"), tmp_path / "a")
    second = import_weights(first.lock, tmp_path / "a", tmp_path / "b")
    assert second.report.ok and len(second.imported) == 3
    third = import_weights(first.lock, tmp_path / "a", tmp_path / "b")
    assert third.imported == []


def test_import_refuses_a_corrupted_source_file(tiny_weights, tmp_path):
    source = _repo_snapshot(tiny_weights, tmp_path / "snapshot")
    data = bytearray((source / "model.safetensors").read_bytes())
    data[777] ^= 0x01
    (source / "model.safetensors").write_bytes(bytes(data))

    with pytest.raises(WeightsError, match="does not match"):
        import_weights(tiny_weights.lock, source, tmp_path / "w", components=["checkpoint"])
    assert not (tmp_path / "w" / "ltxv-tiny.safetensors").exists()
    assert not list((tmp_path / "w").rglob("*.part"))


def test_import_lists_missing_files(tiny_weights, tmp_path):
    source = _repo_snapshot(tiny_weights, tmp_path / "snapshot")
    (source / "text_encoder" / "config.json").unlink()
    with pytest.raises(WeightsError, match="text_encoder/config.json"):
        import_weights(tiny_weights.lock, source, tmp_path / "w")


def test_verify_catches_one_corrupted_byte(tiny_weights, tmp_path):
    result = import_weights(tiny_weights.lock, _repo_snapshot(tiny_weights, tmp_path / "s"), tmp_path / "w")
    target = tmp_path / "w" / "ltxv-tiny.safetensors"
    st = target.stat()
    with open(target, "r+b") as fh:
        fh.seek(150_000)
        byte = fh.read(1)
        fh.seek(150_000)
        fh.write(bytes([byte[0] ^ 0x80]))
    # Even with the modification time put back, a full verify re-reads every byte.
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))

    report = verify_weights(result.lock, tmp_path / "w")

    assert not report.ok
    [bad] = report.problems
    assert bad.state is FileState.HASH_MISMATCH and bad.file.dest == "ltxv-tiny.safetensors"


def test_quick_verify_notices_a_rewritten_file(tiny_weights, tmp_path):
    result = import_weights(tiny_weights.lock, _repo_snapshot(tiny_weights, tmp_path / "s"), tmp_path / "w")
    assert verify_weights(result.lock, tmp_path / "w", quick=True).ok
    config = tmp_path / "w" / "text_encoder/text_encoder/config.json"
    config.write_bytes(b'{"d_model": 33}')  # same size, new content, new mtime
    assert not verify_weights(result.lock, tmp_path / "w", quick=True).ok


def test_server_refuses_corrupted_weights(tiny_weights, tmp_path):
    result = import_weights(tiny_weights.lock, _repo_snapshot(tiny_weights, tmp_path / "s"), tmp_path / "w")
    from ltxserve.weights.lock import write_lock

    write_lock(result.lock, tiny_weights.lock_path)
    settings = Settings(weights_dir=tmp_path / "w", weights_lock=tiny_weights.lock_path, weights_auto_pull=False)
    assert ensure_weights(settings, say=lambda _: None) == tmp_path / "w"

    target = tmp_path / "w" / "ltxv-tiny.safetensors"
    target.write_bytes(b"\0" + target.read_bytes()[1:])
    with pytest.raises(WeightsNotReady, match="hash mismatch"):
        ensure_weights(settings, say=lambda _: None)


def test_server_pulls_missing_weights_on_first_start(tiny_weights, hub_with_tiny, tmp_path):
    settings = Settings(
        weights_dir=tmp_path / "w", weights_lock=tiny_weights.lock_path, weights_base_url=hub_with_tiny.base_url
    )
    messages: list[str] = []
    assert ensure_weights(settings, say=messages.append) == tmp_path / "w"
    assert any("pulling" in m for m in messages)
    # The hash learnt on the first download is now in the lock file, so the next start verifies it.
    recorded = load_lock(tiny_weights.lock_path)
    assert all(f.hash_known for c in recorded.components for f in c.files)


def test_cli_import_verify_show(tiny_weights, tmp_path):
    source = _repo_snapshot(tiny_weights, tmp_path / "snapshot")
    settings = Settings(weights_dir=tmp_path / "w", weights_lock=tiny_weights.lock_path)

    code, out = _run_cli(["weights", "show"], settings)
    assert code == 0 and "missing" in out and "NOT ready" in out

    code, out = _run_cli(["weights", "import", str(source)], settings)
    assert code == 0, out
    assert "imported 3 file(s)" in out

    code, out = _run_cli(["weights", "verify"], settings)
    assert code == 0 and "verified" in out

    (tmp_path / "w" / "ltxv-tiny.safetensors").write_bytes(b"corrupt")
    code, out = _run_cli(["weights", "verify"], settings)
    assert code == 1 and "size mismatch" in out

    code, out = _run_cli(["weights", "show"], settings)
    assert "size mismatch" in out


def test_cli_pull_refuses_unresolved_revision_clearly(tiny_weights, tmp_path):
    # A lock edited by hand to an unpinned revision: pull must say so rather than fetch "main".
    text = tiny_weights.lock_path.read_text().replace(tiny_weights.lock.components[0].revision, "unresolved", 1)
    tiny_weights.lock_path.write_text(text)
    settings = Settings(weights_dir=tmp_path / "w", weights_base_url="http://127.0.0.1:9",
                        weights_lock=tiny_weights.lock_path)
    code, out = _run_cli(["weights", "pull", "--component", "checkpoint", "--no-progress"], settings)
    assert code == 2
    assert "no pinned revision" in out and "weights pin" in out


def test_cli_pin_writes_the_revision(tiny_weights, tmp_path):
    settings = Settings(weights_lock=tiny_weights.lock_path)
    code, _ = _run_cli(["weights", "pin", "checkpoint", "a" * 40, "--note", "from the Hub API"], settings)
    assert code == 0
    assert load_lock(tiny_weights.lock_path).component("checkpoint").revision == "a" * 40
    code, out = _run_cli(["weights", "pin", "checkpoint", "main"], settings)
    assert code == 2 and "40-hex" in out


def test_cli_pin_latest_records_the_hubs_current_commit_then_pull_fetches_exactly_it(tiny_weights, hub_with_tiny,
                                                                                     tmp_path):
    # An optional component whose commit no public source pins: `pin --latest` asks the Hub once (trust on first
    # use) and writes the commit; pull then takes that commit, never the moving branch.
    revision = tiny_weights.lock.components[0].revision
    text = tiny_weights.lock_path.read_text().replace(revision, "unresolved", 1)
    tiny_weights.lock_path.write_text(text)
    hub_with_tiny.heads[tiny_weights.repo] = revision
    settings = Settings(weights_dir=tmp_path / "w", weights_base_url=hub_with_tiny.base_url,
                        weights_lock=tiny_weights.lock_path)
    code, out = _run_cli(["weights", "pin", "checkpoint", "--latest"], settings)
    assert code == 0, out
    pinned = load_lock(tiny_weights.lock_path).component("checkpoint")
    assert pinned.revision == revision and "trust on first use" in pinned.revision_note
    assert [r["path"] for r in hub_with_tiny.requests] == [f"/api/models/{tiny_weights.repo}"]
    code, out = _run_cli(["weights", "pull", "--component", "checkpoint", "--no-progress"], settings)
    assert code == 0, out
    later = [r["path"] for r in hub_with_tiny.requests[1:]]
    assert later and all(p.endswith(f"/{revision}") or f"/{revision}/" in p for p in later), later


def test_cli_pin_latest_of_an_unknown_repo_and_without_a_revision_are_clear(tiny_weights, fake_hub, tmp_path):
    settings = Settings(weights_lock=tiny_weights.lock_path, weights_base_url=fake_hub.base_url)
    code, out = _run_cli(["weights", "pin", "checkpoint", "--latest"], settings)
    assert code == 2 and f"{tiny_weights.repo}'s current commit" in out
    code, out = _run_cli(["weights", "pin", "checkpoint"], settings)
    assert code == 2 and "--latest" in out


def test_show_lists_sizes_and_states(tiny_weights, tmp_path):
    text = show_weights(tiny_weights.lock, tmp_path / "nothing-here")
    assert text.count("missing") >= 3
    assert "ltxv-tiny.safetensors" in text
