"""Waiting for a job to change: a store's own notification when it has one (Redis pub/sub), else a short poll.

    async with change_feed(store, request_id) as feed:
        while ...:
            read the job, send what changed
            await feed.wait(timeout)   # True: something changed (re-read); False: nothing within timeout

A feed is opened before the first read, so a change between a read and the next wait is never missed.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Protocol

POLL_INTERVAL_SECONDS = 0.2


class ChangeWaiter(Protocol):
    async def wait(self, timeout: float) -> bool: ...


class PollingFeed:
    """For stores without notifications (SQLite: the API and workers share a file): re-read every interval."""

    def __init__(self, interval: float = POLL_INTERVAL_SECONDS):
        self.interval = interval

    async def wait(self, timeout: float) -> bool:
        await asyncio.sleep(max(0.0, min(timeout, self.interval)))
        return True


@asynccontextmanager
async def change_feed(store: object, request_id: str) -> AsyncIterator[ChangeWaiter]:
    changes = getattr(store, "changes", None)  # optional JobStore capability: async context manager -> feed
    if changes is None:
        yield PollingFeed()
        return
    async with changes(request_id) as feed:
        yield feed
