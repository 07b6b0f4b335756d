"""A busy thread is listed `running` in the Temporal UI once it has been busy a second. The model call in flight at
that moment asks its thread for the listing, so a turn shorter than that costs the server no timer at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from temporalio import activity
from threadline.contracts import LIST_AS_RUNNING

log = logging.getLogger("threadline.activities")


@contextlib.asynccontextmanager
async def listing_requested(thread_id: str, turn_id: str, at: float | None) -> AsyncIterator[None]:
    """While the body runs: at `at` (epoch seconds; at once if past), signal the thread to list itself running."""
    if at is None or activity.info().is_local:
        yield
        return

    async def request() -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        try:
            await activity.client().get_workflow_handle(thread_id).signal(LIST_AS_RUNNING, turn_id)
        except Exception as e:  # noqa: BLE001 - the listing is for people; the turn goes on without it
            log.warning("could not list thread %s as running: %s", thread_id, e)

    task = asyncio.create_task(request())
    try:
        yield
    finally:
        task.cancel()
