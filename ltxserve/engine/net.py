"""Fetching user-supplied URLs safely: data: URIs and http(s) with size and time limits and no private networks.

Reused for every URL a request can carry (image_url, LoRA files). Every hop (redirects included) goes through the
one outbound address policy (ltxserve.address_policy): resolved once, checked, and connected to the checked address.
A URL naming one of this server's own files is read through the lookup the worker installs (by file id, through the
store), never by joining the URL's path onto a folder; one that names no stored file fails without saying anything
about the disk.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Callable
from urllib.parse import unquote_to_bytes, urljoin

import httpx

from ltxserve import address_policy
from ltxserve.address_policy import AddressRefused
from ltxserve.config import Settings

MAX_REDIRECTS = 5

# url -> Path of a stored file of this server, False for this server's file URL naming no stored file, None for
# any other URL. Installed by the worker process (install_own_file_lookup); none in offline use.
OwnFileLookup = Callable[[str], "Path | bool | None"]
_own_file_lookup: OwnFileLookup | None = None


class FetchError(Exception):
    """`kind` is fal's error type for it: file_download_error (unreachable, refused, too large...)."""

    def __init__(self, message: str, kind: str = "file_download_error"):
        super().__init__(message)
        self.kind = kind


def install_own_file_lookup(lookup: OwnFileLookup | None) -> None:
    global _own_file_lookup
    _own_file_lookup = lookup


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise FetchError("malformed data: URI")
    # base64 grows data by 4/3: refuse before decoding what would be too large anyway
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise FetchError(f"data: URI larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=False) if header.endswith(";base64") else unquote_to_bytes(payload)
    except ValueError:
        raise FetchError("malformed data: URI (bad base64)") from None
    if len(data) > max_bytes:
        raise FetchError(f"data: URI larger than {max_bytes} bytes")
    return data


def read_own_file(url: str, limit: int) -> bytes | None:
    """A URL this server handed out (an upload, an earlier output), read by id through the store; None otherwise."""
    if _own_file_lookup is None:
        return None
    found = _own_file_lookup(url)
    if found is None:
        return None
    if found is False:
        raise FetchError("no such file on this server (expired, never uploaded, or not a file URL)")
    path = Path(found)
    if path.stat().st_size > limit:
        raise FetchError(f"larger than {limit} bytes")
    return path.read_bytes()


def fetch_bytes(url: str, settings: Settings, *, max_bytes: int | None = None) -> bytes:
    limit = max_bytes or settings.fetch_max_bytes
    if url.startswith("data:"):
        return decode_data_uri(url, limit)
    own = read_own_file(url, limit)
    if own is not None:
        return own
    deadline = time.monotonic() + settings.fetch_timeout_seconds
    with httpx.Client(timeout=settings.fetch_timeout_seconds, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = address_policy.check_url(url, allow_private=settings.fetch_allow_private_networks)
            except AddressRefused as exc:
                raise FetchError(str(exc)) from None
            try:
                with client.stream("GET", target.url, **_with_agent(target.httpx_kwargs())) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"HTTP {response.status_code} from {target.server_name}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise FetchError(f"larger than {limit} bytes")
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise FetchError(f"larger than {limit} bytes")
                        if time.monotonic() > deadline:
                            raise FetchError(f"took longer than {settings.fetch_timeout_seconds:g} s")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise FetchError(f"could not download ({type(exc).__name__})") from None
    raise FetchError("too many redirects")


def _with_agent(kwargs: dict) -> dict:
    kwargs["headers"]["User-Agent"] = "ltxserve"
    return kwargs
