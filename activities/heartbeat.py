"""The one heartbeat helper of every long activity: a dead worker is noticed at the heartbeat timeout, and a
cancellation (an interrupt) reaches the activity at its next heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from temporalio import activity

BEATS_PER_TIMEOUT = 4
"""Heartbeats per heartbeat timeout: a missed one or two still leaves the activity alive."""
DEFAULT_INTERVAL = 1.0


@contextlib.asynccontextmanager
async def heartbeating(*details: Any, at_start: bool = False) -> AsyncIterator[None]:
    """Heartbeats (with `details`) while the body runs, paced from the activity's heartbeat timeout. The server
    times a missing first heartbeat from the activity's start, so a short call needs none; `at_start` sends one at
    once, for details that others read from the pending activity (who runs a job)."""
    if activity.info().is_local:  # a local activity has no heartbeats: it lives inside one workflow task
        yield
        return
    timeout = activity.info().heartbeat_timeout
    interval = timeout.total_seconds() / BEATS_PER_TIMEOUT if timeout else DEFAULT_INTERVAL

    async def beat() -> None:
        if at_start:
            activity.heartbeat(*details)
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat(*details)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
