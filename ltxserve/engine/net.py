"""Fetching user-supplied URLs safely: data: URIs and http(s) with size and time limits and no private networks.

Reused for every URL a request can carry (image_url now, LoRA files later). Each redirect hop is checked again, and
the host's resolved addresses must all be public unless settings allow private networks (a server inside a company
network must not become a proxy into it).
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import time
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx

from ltxserve.config import Settings

MAX_REDIRECTS = 5


class FetchError(Exception):
    pass


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise FetchError("malformed data: URI")
    # base64 grows data by 4/3: refuse before decoding what would be too large anyway
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise FetchError(f"data: URI larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=False) if header.endswith(";base64") else unquote_to_bytes(payload)
    except ValueError as exc:
        raise FetchError(f"malformed data: URI ({exc})") from None
    if len(data) > max_bytes:
        raise FetchError(f"data: URI larger than {max_bytes} bytes")
    return data


def check_host(host: str, port: int, allow_private: bool) -> None:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror}") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise FetchError(f"{host} resolves to a non-public address ({address}); refused")


def read_own_file(url: str, settings: Settings, limit: int) -> bytes | None:
    """A URL this server handed out (an upload, an earlier output) is read from disk, not fetched over HTTP:
    no network hop, and the private-network guard does not refuse the server's own address."""
    prefix = settings.base_url() + "/files/"
    if not url.startswith(prefix):
        return None
    parts = urlsplit(url).path.split("/files/", 1)[1].split("/")
    if len(parts) != 2 or not all(p and p not in (".", "..") for p in parts):
        raise FetchError("malformed file URL")
    path = settings.files_dir / parts[0] / unquote_to_bytes(parts[1]).decode()
    if not path.is_file():
        raise FetchError("no such file on this server (expired or never uploaded)")
    if path.stat().st_size > limit:
        raise FetchError(f"larger than {limit} bytes")
    return path.read_bytes()


def fetch_bytes(url: str, settings: Settings, *, max_bytes: int | None = None) -> bytes:
    limit = max_bytes or settings.fetch_max_bytes
    if url.startswith("data:"):
        return decode_data_uri(url, limit)
    own = read_own_file(url, settings, limit)
    if own is not None:
        return own
    deadline = time.monotonic() + settings.fetch_timeout_seconds
    with httpx.Client(timeout=settings.fetch_timeout_seconds, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchError("only http(s) URLs and data: URIs are accepted")
            check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                       settings.fetch_allow_private_networks)
            try:
                with client.stream("GET", url, headers={"User-Agent": "ltxserve"}) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"HTTP {response.status_code} from {parts.hostname}")
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
                raise FetchError(f"{type(exc).__name__}: {exc}") from None
    raise FetchError("too many redirects")
