"""The history window of the threads this worker calls the model for, kept between their turns and brought up to
date from the store's write positions: a turn then reads the few items written since its thread's last model call,
not the whole window (up to HISTORY_WINDOW items, re-read on every call until now).

A window holds every item of its thread from its first seq on, as of a write position. Every write to a thread, by
this process or another (a retried attempt on another worker, a compaction), gets a higher position than all before
it on both backends (SQLite's rowid, Postgres's position sequence under the thread's lock), so the items written
after that position are everything that changed. A call that needs items older than the window reads the store.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections import OrderedDict

from threadline.activities.stores import RoomThreadStore
from threadline.models.thread import ThreadItem

MAX_WINDOW_ITEMS = 4096
"""Items held in all windows together; the least recently used thread's window goes first. The same bound as the
store's parsed-item cache, which holds these very items."""


@dataclasses.dataclass
class _Window:
    position: int
    """The store's write position this window is up to date with."""
    items: list[ThreadItem]
    """In seq order: every item of the thread with a seq from the first one's on."""
    whole_thread: bool
    """The first item is the thread's first: nothing older exists."""

    def seqs(self) -> list[int]:
        return [item.seq for item in self.items]


class ThreadWindows:
    def __init__(self, store: RoomThreadStore, size: int, max_items: int = MAX_WINDOW_ITEMS) -> None:
        self.store = store
        self.size = size
        self.max_items = max_items
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def read(self, thread_id: str, *, before_seq: int) -> list[ThreadItem]:
        """What `store.items(thread_id, before_seq=before_seq, limit=size)` returns. Blocking, like the store."""
        with self._lock:
            window = self._windows.pop(thread_id, None)
            self._held -= len(window.items) if window else 0
        if window is not None:
            self._catch_up(thread_id, window)
        else:
            window = self._filled(thread_id)
        items = window.items[:bisect.bisect_left(window.seqs(), before_seq)]
        if len(items) >= self.size:
            items = items[-self.size:]
        elif not window.whole_thread:
            items = self.store.items(thread_id, before_seq=before_seq, limit=self.size)
        self._keep(thread_id, window)
        return items

    def _filled(self, thread_id: str) -> _Window:
        # The position first: an item written between the two reads comes again as a change, which is harmless.
        position, _ = self.store.position(thread_id)
        items = self.store.items(thread_id, limit=self.size)
        return _Window(position, items, whole_thread=len(items) < self.size)

    def _catch_up(self, thread_id: str, window: _Window) -> None:
        changes = self.store.changes(thread_id, after=window.position)
        if not changes:
            return
        seqs = window.seqs()
        for position, item in changes:
            window.position = max(window.position, position)
            if window.items and item.seq < window.items[0].seq and not window.whole_thread:
                continue
            at = bisect.bisect_left(seqs, item.seq)
            if at < len(seqs) and seqs[at] == item.seq:
                window.items[at] = item
            else:
                window.items.insert(at, item)
                seqs.insert(at, item.seq)
        if len(window.items) > self.size:
            del window.items[:len(window.items) - self.size]
            window.whole_thread = False

    def _keep(self, thread_id: str, window: _Window) -> None:
        with self._lock:
            if thread_id in self._windows:  # another call of this thread kept one meanwhile: as valid as this one
                return
            self._windows[thread_id] = window
            self._held += len(window.items)
            while self._held > self.max_items and len(self._windows) > 1:
                _, dropped = self._windows.popitem(last=False)
                self._held -= len(dropped.items)
