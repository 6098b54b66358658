"""One policy for every outbound request (input images, LoRA files, webhooks): which addresses may be contacted.

A URL is resolved once, every address it resolves to is checked, and the request is then sent to the checked
address itself (the host name travels in the Host header and as the TLS server name), so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot redirect it. Loopback, private, link-local, shared and
reserved addresses are refused unless the operator allows private networks (settings.fetch_allow_private_networks);
the unspecified address and multicast are refused always (0.0.0.0 reaches this very machine).

Torch-free and package-free (stdlib only): the API uses it to check webhook URLs at submit time.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MAX_URL_LENGTH = 2048


class AddressRefused(Exception):
    """The URL is malformed, cannot be resolved, or resolves to an address the policy refuses."""


def resolve_host(host: str, port: int) -> list[str]:
    """The host's addresses (the system resolver). Tests replace this function; nothing else calls getaddrinfo."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"cannot resolve {host}") from exc
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class Target:
    """Where to send a checked request: `url` names the checked address; `host` goes in the Host header."""

    url: str
    host: str  # the Host header value (host[:port] as the URL gave it)
    server_name: str  # TLS server name (SNI and certificate check): the URL's host name
    address: str

    def httpx_kwargs(self) -> dict:
        """headers + extensions for httpx: Host header and the TLS server name of the original host."""
        return {"headers": {"Host": self.host}, "extensions": {"sni_hostname": self.server_name}}


def parse_http_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or AddressRefused saying what is wrong with it."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise AddressRefused(f"URL longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise AddressRefused("URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:  # e.g. port 99999, a bad IPv6 literal
        raise AddressRefused(f"malformed URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise AddressRefused("only http(s) URLs are accepted")
    if not host:
        raise AddressRefused("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("URL must not carry credentials")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return False
    return allow_private or ip.is_global


def check_url(url: str, *, allow_private: bool) -> Target:
    """Resolve the URL's host once and check every address; the Target to connect to, or AddressRefused."""
    scheme, host, port = parse_http_url(url)
    try:
        literal = ipaddress.ip_address(host.split("%")[0])
        addresses = [str(literal)]
    except ValueError:
        addresses = resolve_host(host, port)
    if not addresses:
        raise AddressRefused(f"cannot resolve {host}")
    for address in addresses:
        if not address_allowed(address, allow_private):
            raise AddressRefused(f"{host} resolves to a non-public address ({address.split('%')[0]}); refused")
    address = addresses[0]
    parts = urlsplit(url)
    literal_host = f"[{address}]" if ":" in address else address
    default_port = 443 if scheme == "https" else 80
    netloc = literal_host if port == default_port else f"{literal_host}:{port}"
    host_header = parts.netloc.rpartition("@")[2]
    return Target(url=urlunsplit((scheme, netloc, parts.path, parts.query, "")), host=host_header,
                  server_name=host, address=address)
