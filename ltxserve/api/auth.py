"""`Authorization: Key <key>` (or `Bearer <key>`) against the configured keys; open when none is configured.

Checked by a pure-ASGI middleware, before any handler runs, so that a request without a valid key is answered 401
before a byte of its body is read or parsed (a FastAPI dependency would run only after the body was parsed).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from ltxserve.api.middleware import send_json
from ltxserve.config import Settings

# What needs a key: the queue and run APIs, and everything that stores a file. Reading a file by its URL (128-bit
# random id), the one-shot upload PUT (its URL is the capability; @fal-ai/client sends no key there), health,
# metrics, the JWKS and the OpenAPI document stay open.
_PROTECTED_PREFIXES = ("/queue/", "/run/")
_PROTECTED_PATHS = {"/storage/upload/initiate", "/storage/upload/initiate-multipart", "/storage/auth/token",
                    "/files/upload"}


def needs_key(method: str, path: str) -> bool:
    if method == "OPTIONS":
        return False  # CORS preflight carries no credentials
    path = path.rstrip("/") if path != "/" else path
    return path.startswith(_PROTECTED_PREFIXES) or path in _PROTECTED_PATHS or path in ("/queue", "/run")


def key_error(keys: list[bytes], authorization: str) -> str | None:
    """None when the header carries one of the keys, else what is wrong (for the 401's detail)."""
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() not in ("key", "bearer") or not credential.strip():
        return "Missing or malformed Authorization header: expected 'Key <key>'"
    given = credential.strip().encode("utf-8", "surrogateescape")
    # Compare against every key in constant time, so timing says nothing about which key is close.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return None if ok else "Invalid API key"


class AuthMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.keys = [k.encode() for k in settings.api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not needs_key(scope["method"], scope["path"]):
            return await self.app(scope, receive, send)
        header = ""
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                header = v.decode("latin-1")
        problem = key_error(self.keys, header)
        if problem is None:
            return await self.app(scope, receive, send)
        await send_json(send, 401, {"detail": problem, "error_type": "unauthorized"},
                        extra_headers=[(b"www-authenticate", b"Key"), (b"x-fal-error-type", b"unauthorized")])
