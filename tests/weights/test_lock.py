"""weights.lock: the committed file is valid and canonical, parsing rejects what it must, writing round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltxserve.weights.lock import (
    UNKNOWN_SHA256,
    LockError,
    default_lock_path,
    dump_lock,
    load_lock,
    parse_lock,
    write_lock,
)

ROOT = Path(__file__).resolve().parents[2]
REPO_LOCK = ROOT / "ltxserve" / "weights" / "weights.lock"  # inside the package, so wheels ship it

MINIMAL = """
version = 1

[[component]]
name = "checkpoint"
repo = "acme/model"
revision = "0123456789abcdef0123456789abcdef01234567"

[[component.file]]
path = "model.safetensors"
sha256 = "{sha}"
"""
GOOD_SHA = "ab" * 32


def test_repository_lock_is_the_default_and_parses():
    assert default_lock_path() == REPO_LOCK
    # The top-level weights.lock the design names is the same file (a symlink), not a copy that could drift.
    assert (ROOT / "weights.lock").is_symlink() and (ROOT / "weights.lock").resolve() == REPO_LOCK.resolve()
    lock = load_lock(REPO_LOCK)
    names = {c.name for c in lock.components}
    assert {"checkpoint", "spatial_upscaler", "text_encoder", "tokenizer", "transformer_fp8"} <= names


def test_repository_lock_is_in_canonical_form():
    # `pull --record` rewrites the file with dump_lock; the committed file must already be in that form so a
    # recorded hash shows up in a diff as exactly the changed lines.
    text = REPO_LOCK.read_text()
    assert dump_lock(parse_lock(text)) == text


def test_repository_lock_lays_files_out_as_load_components_reads_them():
    lock = load_lock(REPO_LOCK)
    dests = {f.dest for c in lock.select() for f in c.files}
    assert "ltxv-13b-0.9.7-dev.safetensors" in dests
    assert "ltxv-spatial-upscaler-0.9.7.safetensors" in dests
    assert any(d.startswith("text_encoder/text_encoder/") and d.endswith(".safetensors") for d in dests)
    assert "text_encoder/tokenizer/spiece.model" in dests
    # The optional fp8 file sits beside the bf16 checkpoint under its published name: load_components takes it for
    # --dtype fp8 (models.FP8_CHECKPOINT_NAME) and never mistakes it for the bf16 checkpoint otherwise.
    from ltxserve.engine.models import FP8_CHECKPOINT_NAME

    fp8 = lock.component("transformer_fp8")
    assert fp8.optional and [f.dest for f in fp8.files] == [FP8_CHECKPOINT_NAME]
    # The safety checker (on by default) is required, in its Hub layout where safety_checker.resolve_folder looks.
    from ltxserve.engine.safety_checker import FOLDER_NAME, REQUIRED_FILES

    checker = lock.component("safety_checker")
    assert not checker.optional and {f.dest for f in checker.files} == {f"{FOLDER_NAME}/{n}" for n in REQUIRED_FILES}


def test_repository_lock_marks_provenance_honestly():
    lock = load_lock(REPO_LOCK)
    for comp in lock.components:
        # Every revision is a full commit id (never a branch), with a note saying where it came from; only an
        # optional component may be "unresolved", with a note saying how to pin it. Nothing is marked verified
        # before `weights pull` has confirmed it with the Hub.
        assert comp.revision_note, comp.name
        assert comp.revision_resolved or (comp.optional and "weights pin" in comp.revision_note), comp.name
        assert not any(f.verified for f in comp.files), comp.name
    checkpoint = lock.component("checkpoint").files[0]
    assert "unconfirmed" in checkpoint.sha256_source


# Published values (see shared/reference/facts.md): the pins must match them exactly.
PIXART_REVISION = "b89adadeccd9ead2adcb9fa2825d3fabec48d404"
FALCONSAI_REVISION = "96cb0d0342c7afb80cab76ecc58b265fa44da256"  # pinned by several public projects
LTX_REVISION = "8984fa25007f376c1a299016d0957a37a2f797bb"
LLAMA_REVISION = "006f5dcd1393c3add266de40994ba96225e9689d"  # several public projects' Hub cache paths
PUBLISHED = {
    "text_encoder/text_encoder/model-00001-of-00002.safetensors":
        (9_989_150_328, "eb529f693f4b17773a24e787fcba29486d5e1700dadcc20bb91e4c8b00212d08"),
    "text_encoder/text_encoder/model-00002-of-00002.safetensors":
        (9_060_119_392, "58f33f4acba7a5502b6b3e4cb7863f8fd503d5012016428099bb460c98e2fe77"),
    "text_encoder/text_encoder/model.safetensors.index.json":
        (19_886, "fb4665a1a122b7e5270f0e4494c653839c11a5a978e03b0df6dfa714258716e6"),
    "text_encoder/tokenizer/spiece.model": (791_656, "d60acb128cf7b7f2536e8f38a5b18a05535c9e14c7a355904270e15b0945ea86"),
}


def test_repository_lock_pins_the_published_revisions_and_hashes():
    lock = load_lock(REPO_LOCK)
    for comp in lock.components:
        expected = {"PixArt-alpha/PixArt-XL-2-1024-MS": PIXART_REVISION, "Lightricks/LTX-Video": LTX_REVISION,
                    "unsloth/Llama-3.2-3B-Instruct": LLAMA_REVISION,
                    "MiaoshouAI/Florence-2-large-PromptGen-v2.0": "unresolved",  # no public pin found
                    "Falconsai/nsfw_image_detection": FALCONSAI_REVISION}
        assert comp.revision == expected[comp.repo], comp.name
    files = {f.dest: f for c in lock.components for f in c.files}
    for dest, (size, sha) in PUBLISHED.items():
        assert (files[dest].size, files[dest].sha256) == (size, sha), dest


def test_minimal_lock_fills_defaults():
    lock = parse_lock(MINIMAL.format(sha=GOOD_SHA))
    f = lock.component("checkpoint").files[0]
    assert f.dest == f.path == "model.safetensors"
    assert f.size is None and not f.verified


@pytest.mark.parametrize(
    "change, message",
    [
        (('revision = "0123456789abcdef0123456789abcdef01234567"', 'revision = "main"'), "40-hex"),
        (('revision = "0123456789abcdef0123456789abcdef01234567"', 'revision = "b0f7c01"'), "short id"),
        (('sha256 = "{sha}"', 'sha256 = "ABC"'), "sha256"),
        (('repo = "acme/model"', 'repo = "model"'), "owner/name"),
        (('path = "model.safetensors"', 'path = "m"\ndest = "../escape"'), "relative path"),
        (('path = "model.safetensors"', 'path = "m"\ndest = "/abs/file"'), "relative path"),
        (("version = 1", "version = 2"), "version"),
        (('path = "model.safetensors"', 'path = "m"\nsize = "big"'), "size"),
        (('name = "checkpoint"', "name = 3"), "name"),
    ],
)
def test_invalid_locks_are_rejected_with_a_reason(change, message):
    old, new = change
    text = MINIMAL.replace(old, new).format(sha=GOOD_SHA)
    with pytest.raises(LockError, match=message):
        parse_lock(text)


def test_duplicate_destinations_are_rejected():
    text = MINIMAL.format(sha=GOOD_SHA)
    text += text.split("version = 1", 1)[1].replace('name = "checkpoint"', 'name = "other"')
    with pytest.raises(LockError, match="duplicate file dest"):
        parse_lock(text)


def test_not_toml_is_a_lock_error():
    with pytest.raises(LockError, match="not valid TOML"):
        parse_lock("version = = 1")


def test_write_then_load_round_trips_and_records(tmp_path):
    lock = load_lock(REPO_LOCK)
    dest = "text_encoder/text_encoder/config.json"
    recorded = lock.with_recorded("text_encoder", dest, sha256="cd" * 32, size=788, source="recorded in a test")
    path = write_lock(recorded, tmp_path / "weights.lock")

    again = load_lock(path)
    assert again == recorded
    entry = next(f for f in again.component("text_encoder").files if f.dest == dest)
    assert (entry.sha256, entry.sha256_source) == ("cd" * 32, "recorded in a test")
    # Only that entry changed: its size line is added, its sha256 and source lines are replaced.
    import difflib

    diff = [d for d in difflib.ndiff(dump_lock(lock).splitlines(), path.read_text().splitlines()) if d[:1] in "+-"]
    assert sorted(d[:1] + d[2:].split(" =")[0] for d in diff) == [
        "+sha256", "+sha256_source", "+size", "-sha256", "-sha256_source"]


def test_recording_never_overwrites_a_known_hash():
    lock = parse_lock(MINIMAL.format(sha=GOOD_SHA))
    same = lock.with_recorded("checkpoint", "model.safetensors", sha256="ef" * 32, size=10, source="x")
    f = same.component("checkpoint").files[0]
    assert f.sha256 == GOOD_SHA
    assert f.size == 10  # a missing size is filled in


def test_pin_requires_a_full_commit():
    lock = parse_lock(MINIMAL.format(sha=GOOD_SHA))
    with pytest.raises(LockError, match="40-hex"):
        lock.with_revision("checkpoint", "828d9fa")
    pinned = lock.with_revision("checkpoint", "f" * 40, "found on the Hub")
    assert pinned.component("checkpoint").revision == "f" * 40


def test_unknown_component_names_the_known_ones():
    lock = parse_lock(MINIMAL.format(sha=GOOD_SHA))
    with pytest.raises(LockError, match="checkpoint"):
        lock.component("vae")
