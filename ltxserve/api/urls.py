"""The URLs the server hands out, all from the configured public base URL."""

from __future__ import annotations

from ltxserve.config import Settings


class Urls:
    def __init__(self, settings: Settings):
        self.base = settings.base_url()

    def request(self, owner: str, app: str, request_id: str) -> str:
        return f"{self.base}/queue/{owner}/{app}/requests/{request_id}"

    def status(self, owner: str, app: str, request_id: str) -> str:
        return self.request(owner, app, request_id) + "/status"

    def cancel(self, owner: str, app: str, request_id: str) -> str:
        return self.request(owner, app, request_id) + "/cancel"

    def upload(self, file_id: str) -> str:
        return f"{self.base}/storage/upload/{file_id}"
