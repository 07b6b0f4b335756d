"""Live turn events (text deltas, tool calls, retries) for streaming clients, kept beside the thread store.

The model activity streams from the model and appends coalesced deltas here; chat clients tail the log by event id,
so a client that connects late or reconnects with its last id gets what it missed, and several agent processes on
one machine share it (agents on several machines: the PostgreSQL thread store's database, `open_stream_log(room,
url)`). Events are tagged with the activity attempt: a retried model call announces itself with a `retry` event so
clients drop the aborted attempt's text instead of showing it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from threadline.activities import local_writes
from threadline.activities.storage import room_dir

EventKind = Literal["delta", "retry", "tool_started", "tool_finished", "accepted", "refused"]
"""`accepted`: a channel handed the turn to its thread (published by the HTTP chat channel, attempt 0, just before
delivering it); `refused`: that delivery failed after all."""

COALESCE_SECONDS = 0.1
KEEP_SECONDS = 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stream_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    thread_id TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS stream_events_thread ON stream_events (thread_id, id);
"""


class StreamEvent(BaseModel):
    id: int
    thread_id: str
    turn_id: str
    attempt: int
    kind: EventKind
    data: dict[str, Any]
    created_at: float


class StreamLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connect().executescript(_SCHEMA)

    @classmethod
    def for_room(cls, room: str) -> StreamLog:
        return cls(room_dir(room) / "threads.sqlite3")

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # Stream events are a live view kept an hour: no fsync per delta (a crash loses at most the last ones,
            # and the thread store has the answer).
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def publish(self, thread_id: str, turn_id: str, attempt: int, kind: EventKind, data: dict[str, Any]) -> None:
        self._connect().execute(
            "INSERT INTO stream_events (thread_id, turn_id, attempt, kind, data, created_at) VALUES (?,?,?,?,?,?)",
            (thread_id, turn_id, attempt, kind, json.dumps(data), time.time()),
        )
        local_writes.written()

    def events(self, thread_id: str, *, after_id: int = 0, turn_id: str | None = None) -> list[StreamEvent]:
        query = "SELECT id, thread_id, turn_id, attempt, kind, data, created_at FROM stream_events WHERE thread_id=? AND id>?"
        args: list[Any] = [thread_id, after_id]
        if turn_id is not None:
            query += " AND turn_id=?"
            args.append(turn_id)
        return [
            StreamEvent(id=r[0], thread_id=r[1], turn_id=r[2], attempt=r[3], kind=r[4], data=json.loads(r[5]),
                        created_at=r[6])
            for r in self._connect().execute(query + " ORDER BY id", args)
        ]

    def last_id_until(self, thread_id: str, created_at: float) -> int:
        """The id of a thread's last event published at or before `created_at` (0 when none)."""
        row = self._connect().execute(
            "SELECT MAX(id) FROM stream_events WHERE thread_id=? AND created_at<=?", (thread_id, created_at)
        ).fetchone()
        return row[0] or 0

    def changed_threads(self, after: int | None) -> tuple[int, set[str]]:
        """The latest event id and the threads with events after `after` (None: just the id); see ThreadStore."""
        db = self._connect()
        if after is None:
            return db.execute("SELECT COALESCE(MAX(id), 0) FROM stream_events").fetchone()[0], set()
        rows = db.execute("SELECT thread_id, MAX(id) FROM stream_events WHERE id>? GROUP BY thread_id", (after,)).fetchall()
        return max([after, *(r[1] for r in rows)]), {r[0] for r in rows}

    def prune(self, older_than: float = KEEP_SECONDS) -> None:
        self._connect().execute("DELETE FROM stream_events WHERE created_at<?", (time.time() - older_than,))


class DeltaCoalescer:
    """Buffers text deltas and publishes them from one writer task, off the event loop: the first at once, then what
    came in during each COALESCE_SECONDS. A slow or locked store delays the feed, never the model's stream or the
    activity's heartbeats."""

    def __init__(self, log: StreamLog, thread_id: str, turn_id: str, attempt: int) -> None:
        self.log, self.thread_id, self.turn_id, self.attempt = log, thread_id, turn_id, attempt
        self.buffer: list[str] = []
        self._more = asyncio.Event()
        self._closing = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def add(self, text: str) -> None:
        if not text:
            return
        self.buffer.append(text)
        self._more.set()
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())

    async def finish(self) -> str:
        """Stops publishing and returns the text not yet published, which the caller writes to the log together with
        the answer (one trip to the database, the deltas first)."""
        self._closing.set()
        self._more.set()
        if self._writer is not None:
            await self._writer
        rest = "".join(self.buffer)
        self.buffer.clear()
        return rest

    def cancel(self) -> None:
        """The call failed or was cancelled: stop publishing."""
        if self._writer is not None:
            self._writer.cancel()

    async def _write(self) -> None:
        while True:
            await self._more.wait()
            self._more.clear()
            if self._closing.is_set():
                return
            if self.buffer:
                text = "".join(self.buffer)
                self.buffer.clear()
                await asyncio.to_thread(self.log.publish, self.thread_id, self.turn_id, self.attempt, "delta",
                                        {"text": text})
            with contextlib.suppress(TimeoutError):  # the last deltas go with the answer at once, not after a pause
                await asyncio.wait_for(self._closing.wait(), COALESCE_SECONDS)
