"""LocalFolderStorage: the files' layout, ids and URLs, and writes that a reader (on this host or another one on a
shared mount) sees whole or not at all."""

from __future__ import annotations

import pytest

from ltxserve.jobs.store import StoredFile
from ltxserve.storage import LocalFolderStorage, safe_file_name

BASE = "https://api.example:8443/"


@pytest.fixture
def storage(tmp_path):
    return LocalFolderStorage(tmp_path / "files", BASE)


def visible(storage) -> list[str]:
    """What a reader listing the folder would take for files (temporary names start with '.')."""
    return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def test_save_bytes_and_a_path(storage, tmp_path):
    rec = storage.save(b"hello", "out.mp4", "video/mp4", request_id="r1")
    assert len(rec.file_id) == 32 and rec.path == f"{rec.file_id}/out.mp4" and rec.file_size == 5
    assert rec.request_id == "r1" and rec.complete and rec.content_type == "video/mp4"
    assert storage.path_for(rec).read_bytes() == b"hello" and storage.open(rec).read() == b"hello"
    src = tmp_path / "made.bin"
    src.write_bytes(b"x" * 1000)
    moved = storage.save(src, "../../evil name.bin", "application/octet-stream")
    assert not src.exists() and moved.file_name == "evil_name.bin" and moved.file_size == 1000
    assert moved.file_id != rec.file_id
    assert visible(storage) == sorted([rec.path, moved.path])


def test_urls_round_trip_and_foreign_urls_are_none(storage):
    rec = storage.save(b"v", "a b.mp4", "video/mp4")
    url = storage.url_for(rec)
    assert url == f"https://api.example:8443/files/{rec.file_id}/a_b.mp4"
    assert storage.parse_url(url) == (rec.file_id, "a_b.mp4") and storage.file_id_from_url(url) == rec.file_id
    assert storage.file_id_from_url("https://elsewhere.example/files/x/y") is None
    assert storage.file_id_from_url("https://api.example:8443/files/only-one") == ""  # ours but malformed
    assert storage.parse_url("https://api.example:8443/files/a/b/c") == ("", "")


def test_a_write_is_invisible_until_complete(storage):
    rec = storage.new_upload("in.png", "image/png", expires_at=None)
    assert not rec.complete and rec.file_size == 0 and storage.path_for(rec) is None
    with storage.writer(rec) as out:
        out.write(b"partial")
        out.flush()
        assert storage.path_for(rec) is None and visible(storage) == []  # a reader sees nothing yet
    assert storage.path_for(rec).read_bytes() == b"partial" and visible(storage) == [rec.path]


def test_a_failed_write_leaves_nothing(storage):
    rec = storage.new_upload("in.png", "image/png", expires_at=None)
    with pytest.raises(RuntimeError):
        with storage.writer(rec) as out:
            out.write(b"half")
            raise RuntimeError("client went away")
    assert storage.path_for(rec) is None
    assert [p for p in storage.root.rglob("*") if p.is_file()] == []  # no temporary left either


def test_records_pointing_outside_their_folder_are_refused(storage, tmp_path):
    (tmp_path / "secret.txt").write_text("no")
    rec = storage.save(b"ok", "a.txt", "text/plain")
    for path in ("../secret.txt", f"{rec.file_id}/../../secret.txt", "0" * 32 + "/a.txt"):
        forged = StoredFile(file_id=rec.file_id, path=path, content_type="text/plain", file_name="a.txt",
                            file_size=2, created_at=0)
        assert storage.path_for(forged) is None, path
    not_an_id = StoredFile(file_id="..", path="../secret.txt", content_type="t", file_name="x", file_size=0,
                           created_at=0)
    assert storage.path_for(not_an_id) is None
    storage.delete(not_an_id)
    assert (tmp_path / "secret.txt").exists()


def test_delete_removes_the_bytes(storage):
    rec = storage.save(b"bye", "a.txt", "text/plain")
    storage.delete(rec)
    assert storage.path_for(rec) is None and not (storage.root / rec.file_id).exists()
    storage.delete(rec)  # again: nothing to do, no error


@pytest.mark.parametrize("name, kind, expected", [
    ("photo.png", "image/png", "photo.png"),
    ("/etc/passwd", "text/plain", "passwd"),
    ("..", "image/jpeg", "upload.jpg"),
    (None, "video/mp4", "upload.mp4"),
    ("a\u00e9b.png", "image/png", "a_b.png"),
])
def test_safe_file_names(name, kind, expected):
    assert safe_file_name(name, kind) == expected
