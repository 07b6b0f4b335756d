"""Wakes this process's readers of the thread store (the chat feed's poller) as soon as this process has written an
item or a stream event, instead of at their next poll: in an agent process the model activity that writes a turn's
deltas and the HTTP channel that streams them share one process. Writes by other processes are still found by
polling. Writers run in worker threads (store calls are off the event loop), so readers are woken thread-safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

_lock = threading.Lock()
_readers: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}


def listen() -> asyncio.Event:
    """An event that every later write of this process sets; the reader clears it, and calls `forget` when done."""
    event = asyncio.Event()
    with _lock:
        _readers[event] = asyncio.get_running_loop()
    return event


def forget(event: asyncio.Event) -> None:
    with _lock:
        _readers.pop(event, None)


def written() -> None:
    """Called by the store backends after each committed write of items or stream events."""
    with _lock:
        readers = list(_readers.items())
    for event, loop in readers:
        if not event.is_set():  # read from another thread: at worst one wake too many
            with contextlib.suppress(RuntimeError):  # the reader's loop has closed
                loop.call_soon_threadsafe(event.set)
