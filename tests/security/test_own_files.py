"""Hole 1: a URL of this server's files is found by id through the store, never by joining its path onto a folder.

The worker reads `image_url` / LoRA URLs that name this server's files; before, the percent-decoded path of such a
URL replaced the files folder, so any readable file on the server could be fetched (and the error texts told which
paths exist).
"""

from __future__ import annotations

import time

import pytest

from ltxserve.config import Settings
from ltxserve.engine.net import FetchError, fetch_bytes
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import StoredFile
from ltxserve.storage import storage_from_settings
from ltxserve.worker.runner import Worker


@pytest.fixture
def worker_side(tmp_path):
    """A worker's view: its settings, its store, with one stored upload, and a secret outside the files folder."""
    settings = Settings(data_dir=tmp_path / "data", port=8123)
    settings.files_dir.mkdir(parents=True)
    store = SqliteJobStore(settings.db_path)
    Worker(settings, "w-test", store, storage_from_settings(settings))  # installs the store-backed lookup, as in the worker process
    file_id = "0123456789abcdef0123456789abcdef"
    (settings.files_dir / file_id).mkdir()
    (settings.files_dir / file_id / "in.png").write_bytes(b"stored bytes")
    store.add_file(StoredFile(file_id=file_id, path=f"{file_id}/in.png", content_type="image/png", file_name="in.png",
                              file_size=12, created_at=time.time()))
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret")
    yield settings, file_id, secret
    store.close()


def test_stored_file_is_read_by_id(worker_side):
    settings, file_id, _ = worker_side
    assert fetch_bytes(f"{settings.base_url()}/files/{file_id}/in.png", settings) == b"stored bytes"


@pytest.mark.parametrize("tail", [
    "x/{secret_q}",                      # the reported form: an encoded absolute path as the file name
    "{file_id}/{secret_q}",              # a real id, then an absolute path
    "{file_id}/..%2F..%2F..%2Fsecret.png",
    "{file_id}/%2E%2E/in.png",
    "..%2Fsecret.png/in.png",
    "{file_id}/in.png/extra",
    "{file_id}/other.png",               # a real id with a name that is not its name
    "ffffffffffffffffffffffffffffffff/in.png",
])
def test_file_urls_that_name_no_stored_file_are_refused_alike(worker_side, tail):
    settings, file_id, secret = worker_side
    secret_q = str(secret).replace("/", "%2F")
    url = f"{settings.base_url()}/files/" + tail.format(file_id=file_id, secret_q=secret_q)
    with pytest.raises(FetchError) as exc:
        fetch_bytes(url, settings)
    # One message whatever exists on disk: nothing about paths, readability or existence of files.
    assert str(exc.value) == "no such file on this server (expired, never uploaded, or not a file URL)"
    assert exc.value.kind == "file_download_error"


def test_existing_and_missing_paths_give_the_same_answer(worker_side):
    settings, _, _ = worker_side
    answers = set()
    for path in ("/etc/passwd", "/etc/hostname", "/no/such/file.png"):
        with pytest.raises(FetchError) as exc:
            fetch_bytes(f"{settings.base_url()}/files/x/{path.replace('/', '%2F')}", settings)
        answers.add(str(exc.value))
    assert len(answers) == 1


def test_lora_path_given_as_a_file_url_obeys_the_store(worker_side):
    """A LoRA `path` that is this server's file URL (with an encoded absolute path) cannot read outside."""
    from ltxserve.engine.contract import InputError
    from ltxserve.engine.lora import LoraStore

    settings, _, secret = worker_side
    loras = LoraStore(settings)
    url = f"{settings.base_url()}/files/x/{str(secret).replace('/', '%2F')}"
    with pytest.raises(InputError) as exc:
        loras.load(url, None, transformer=None)
    assert "top secret" not in str(exc.value) and str(secret) not in exc.value.message
    assert "no such file on this server" in exc.value.message


@pytest.mark.parametrize("form", ["{secret}", "{secret_rel}", "file://{secret}", "{allowed}/../secret.png",
                                  "{allowed}/link.safetensors", "~/../../{secret}"])
def test_lora_local_paths_obey_lora_dirs_in_every_form(tmp_path, form):
    from ltxserve.engine.contract import InputError
    from ltxserve.engine.lora import LoraStore

    allowed = tmp_path / "loras"
    allowed.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret")
    (allowed / "link.safetensors").symlink_to(secret)  # a link inside the folder pointing out of it
    settings = Settings(data_dir=tmp_path / "data", lora_dirs=[allowed])
    path = form.format(secret=secret, allowed=allowed, secret_rel="../" * 12 + str(secret).lstrip("/"))
    with pytest.raises(InputError) as exc:
        LoraStore(settings).load(path, None, transformer=None)
    assert "not under an allowed LoRA folder" in exc.value.message
