"""File storage: fal's upload handshake (initiate → PUT) and the files themselves, with HTTP Range for seeking.

Uploads and generated outputs are held by the FileStorage (ltxserve/storage.py: layout, ids, URLs), indexed in the
store, and expire with it. The upload URL's file id (128 random bits) is the capability to write once; no
Authorization is expected on the PUT because @fal-ai/client sends none there.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from ltxserve.api.queue import lifecycle_seconds
from ltxserve.api.urls import Urls
from ltxserve.config import Settings
from ltxserve.jobs.store import JobStore, StoredFile
from ltxserve.protocol import UploadInitiateRequest, UploadInitiateResponse
from ltxserve.storage import FileStorage
from ltxserve.stored_files import stored_file


def _is_media(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind.startswith(("image/", "video/", "audio/")) and kind != "image/svg+xml"


def _download_type(content_type: str) -> str:
    """Non-media is served as what it claims only when it is plainly inert; otherwise as bytes."""
    kind = content_type.split(";")[0].strip().lower()
    return content_type if kind in ("text/plain", "application/json", "application/octet-stream") else \
        "application/octet-stream"


def build_storage_router(settings: Settings, store: JobStore, storage: FileStorage) -> APIRouter:
    # Uploads need a key when keys are configured (AuthMiddleware); the one-shot PUT's URL is its own capability.
    router = APIRouter(tags=["storage"])
    urls = Urls(settings)

    def new_upload(content_type: str, file_name: str | None, lifecycle_seconds: int | None) -> StoredFile:
        retention = settings.result_retention_seconds
        if lifecycle_seconds:
            retention = max(1, min(retention, lifecycle_seconds))
        record = storage.new_upload(file_name, content_type, expires_at=time.time() + retention)
        store.add_file(record)
        return record

    def lifecycle_of(request: Request) -> int | None:
        for header in ("x-fal-object-lifecycle", "x-fal-object-lifecycle-preference"):
            raw = request.headers.get(header)
            if raw:
                return lifecycle_seconds(raw)
        return None

    async def receive_into(record: StoredFile, request: Request) -> int:
        size = 0
        with storage.writer(record) as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise HTTPException(413, detail="Upload too large")
                await to_thread.run_sync(out.write, chunk)
        await to_thread.run_sync(store.mark_file_complete, record.file_id, size)
        return size

    @router.post("/storage/upload/initiate", response_model=UploadInitiateResponse)
    @router.post("/storage/upload/initiate-multipart", include_in_schema=False)
    def initiate(body: UploadInitiateRequest, request: Request) -> UploadInitiateResponse:
        record = new_upload(body.content_type, body.file_name, lifecycle_of(request))
        return UploadInitiateResponse(upload_url=urls.upload(record.file_id),
                                      file_url=storage.url_for(record))

    @router.put("/storage/upload/{file_id}")
    async def upload(file_id: str, request: Request):
        record = await to_thread.run_sync(store.get_file, file_id)
        if record is None or record.complete:
            raise HTTPException(404, detail="Unknown or already used upload URL")
        await receive_into(record, request)
        return {"file_url": storage.url_for(record)}

    # The Python client's storage path (reachable when its REST/CDN URLs are pointed here).
    @router.post("/storage/auth/token", include_in_schema=False)
    def cdn_token():
        expires = datetime.now(timezone.utc) + timedelta(hours=1)
        return {"token": uuid.uuid4().hex, "token_type": "Bearer", "base_url": urls.base,
                "expires_at": expires.isoformat()}

    @router.post("/files/upload", include_in_schema=False)
    async def direct_upload(request: Request):
        content_type = request.headers.get("content-type", "application/octet-stream")
        record = await to_thread.run_sync(new_upload, content_type, request.headers.get("x-fal-file-name"),
                                          lifecycle_of(request))
        await receive_into(record, request)
        return {"access_url": storage.url_for(record)}

    @router.get("/files/{file_id}")
    @router.get("/files/{file_id}/{file_name}")
    def get_file(file_id: str, file_name: str | None = None):
        found = stored_file(store, storage, file_id, file_name)
        if found is None:
            raise HTTPException(404, detail="File not found")
        record, path = found
        # Media is shown inline; anything else (an upload's client-chosen type: text/html, svg...) is a download,
        # and nosniff stops a browser from guessing a type the server did not send.
        inline = _is_media(record.content_type)
        # FileResponse answers Range requests with 206 and Content-Range (Starlette >= 0.39).
        return FileResponse(path, media_type=record.content_type if inline else _download_type(record.content_type),
                            filename=record.file_name, content_disposition_type="inline" if inline else "attachment",
                            headers={"X-Content-Type-Options": "nosniff"})

    return router
