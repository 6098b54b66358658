"""`Authorization: Key <key>` (or `Bearer <key>`) against the configured keys; open when none is configured."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from ltxserve.config import Settings


def make_auth_dependency(settings: Settings):
    keys = [k.encode() for k in settings.api_keys]

    # async: pure header work, so FastAPI runs it on the event loop instead of a thread-pool hop per request.
    async def require_key(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() not in ("key", "bearer") or not credential:
            raise HTTPException(401, detail="Missing or malformed Authorization header: expected 'Key <key>'")
        given = credential.strip().encode()
        # Compare against every key in constant time, so timing says nothing about which key is close.
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise HTTPException(401, detail="Invalid API key")

    return require_key
