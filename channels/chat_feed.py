"""A thread's live feed for HTTP clients: stream-log events (deltas, retries, tools) and thread-store items (messages,
results, errors), merged in the order they happened, plus the workflow's status (running and queued turns).

Both sources live in the room's SQLite file, so any agent process on the machine can serve any thread's feed. A
position in the feed is a `Cursor`: the last stream-log event id and the last item write position the client has
seen, written `S-I` (the SSE event id), so a client that reconnects with `Last-Event-ID` gets exactly what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client
from threadline.activities.stream_log import StreamEvent, StreamLog
from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import thread_snapshot
from threadline.models import ThreadItem

POLL_SECONDS = 0.02
"""How often a follower reads the stream log and the store: the reader's share of the streaming latency."""
STATUS_POLL_SECONDS = 0.5
STATUS_QUERY_TIMEOUT = 3.0
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True, order=True)
class Cursor:
    stream: int = 0
    items: int = 0

    def __str__(self) -> str:
        return f"{self.stream}-{self.items}"

    @classmethod
    def parse(cls, value: str | None) -> Cursor | None:
        if not value:
            return None
        left, sep, right = value.strip().partition("-")
        if not sep or not left.isdigit() or not right.isdigit():
            return None
        return cls(int(left), int(right))


@dataclass
class FeedEvent:
    """One SSE event: `event` name, JSON `data`, and the cursor after it (None: not replayable, e.g. status)."""

    event: str
    data: dict[str, Any]
    cursor: Cursor | None = None

    def sse(self) -> str:
        import json

        lines = [f"id: {self.cursor}"] if self.cursor is not None else []
        lines.append(f"event: {self.event}")
        lines.append("data: " + json.dumps(self.data, ensure_ascii=False, separators=(",", ":")))
        return "\n".join(lines) + "\n\n"


def current_cursor(store: ThreadStore, log: StreamLog, thread_id: str) -> Cursor:
    """Where a client that just read the thread's items should start following: after every item, and after every
    stream event that happened before the newest item, so the text of a step still being written is replayed."""
    items, newest = store.position(thread_id)
    return Cursor(log.last_id_until(thread_id, newest), items)


def _stream_event(event: StreamEvent) -> tuple[str, dict[str, Any]]:
    base = {"turn_id": event.turn_id, "attempt": event.attempt}
    if event.kind == "delta":
        return "delta", {**base, "text": event.data.get("text", "")}
    if event.kind == "retry":
        return "retry", {**base, "step": event.data.get("step")}
    if event.kind == "accepted":
        return "turn", {"turn_id": event.turn_id, "phase": "accepted", **event.data}
    phase = "started" if event.kind == "tool_started" else "finished"
    return "tool", {**base, "phase": phase, **event.data}


def _item_events(item: ThreadItem) -> list[tuple[str, dict[str, Any]]]:
    data = item.model_dump(mode="json")
    events: list[tuple[str, dict[str, Any]]] = []
    if item.type == "user" and not item.data.get("steer"):
        events.append(("turn", {"turn_id": item.turn_id, "phase": "started"}))
    events.append(("item", data))
    if item.type == "assistant" and not item.tool_calls:
        events.append(("turn", {"turn_id": item.turn_id, "phase": "ended", "status": "completed"}))
    elif item.type == "error":
        events.append(("error", {"turn_id": item.turn_id, "message": item.text}))
        events.append(("turn", {"turn_id": item.turn_id, "phase": "ended", "status": "failed", "error": item.text}))
    elif item.type == "status" and item.text == "turn cancelled":
        events.append(("turn", {"turn_id": item.turn_id, "phase": "ended", "status": "cancelled"}))
    return events


def read_after(store: ThreadStore, log: StreamLog, thread_id: str, cursor: Cursor) -> list[FeedEvent]:
    """Everything after `cursor`, in the order it happened. The stream log is read first: a delta of a model call's
    next step is published only after the previous step's answer is committed, so that answer is seen too."""
    events = log.events(thread_id, after_id=cursor.stream)
    changes = store.changes(thread_id, after=cursor.items)
    merged: list[tuple[float, int, int, Any]] = [(e.created_at, 0, e.id, e) for e in events]
    merged += [(item.created_at, 1, rowid, item) for rowid, item in changes]
    merged.sort(key=lambda m: (m[0], m[1], m[2]))
    out: list[FeedEvent] = []
    stream, items = cursor.stream, cursor.items
    for _, source, position, value in merged:
        if source == 0:
            stream = max(stream, position)
            name, data = _stream_event(value)
            out.append(FeedEvent(name, data, Cursor(stream, items)))
        else:
            items = max(items, position)
            group = _item_events(value)
            # One position per item: only the group's last event carries it, so a client that reconnects after
            # any of them gets none of them twice... or all of them again when it missed the last one.
            for n, (name, data) in enumerate(group):
                out.append(FeedEvent(name, data, Cursor(stream, items) if n == len(group) - 1 else None))
    return out


@dataclass
class _Watch:
    task: asyncio.Task[None] | None = None
    users: int = 0
    version: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class StatusWatcher:
    """One poller of the workflow's `snapshot` query per followed thread, shared by all its followers."""

    def __init__(self, client: Client, store: ThreadStore) -> None:
        self.client, self.store = client, store
        self._watches: dict[str, _Watch] = {}

    async def status(self, thread_id: str) -> dict[str, Any]:
        """The thread's status now: from the workflow when it answers, else from the store."""
        try:
            snap = await asyncio.wait_for(thread_snapshot(self.client, thread_id), STATUS_QUERY_TIMEOUT)
        except Exception:  # noqa: BLE001 - no workflow yet, or no worker to answer: the store knows the rest
            info = self.store.thread(thread_id)
            return {"status": info.status if info else "idle", "running_turn_id": None, "queued_turn_ids": [],
                    "live": False}
        return {"status": snap.status, "running_turn_id": snap.running_turn_id,
                "queued_turn_ids": snap.queued_turn_ids, "live": True}

    @contextlib.asynccontextmanager
    async def watch(self, thread_id: str) -> AsyncIterator[_Watch]:
        watch = self._watches.setdefault(thread_id, _Watch())
        watch.users += 1
        if watch.task is None:
            watch.task = asyncio.create_task(self._poll(thread_id, watch))
        try:
            yield watch
        finally:
            watch.users -= 1
            if watch.users == 0:
                watch.task.cancel()
                self._watches.pop(thread_id, None)

    def poke(self, thread_id: str) -> None:
        """Someone just delivered a turn or a signal: poll again soon."""
        watch = self._watches.get(thread_id)
        if watch is not None:
            watch.changed.set()

    async def _poll(self, thread_id: str, watch: _Watch) -> None:
        while True:
            status = await self.status(thread_id)
            if status != watch.status:
                watch.status = status
                watch.version += 1
            watch.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), STATUS_POLL_SECONDS)
            await asyncio.sleep(0.05)


async def follow(
    store: ThreadStore,
    log: StreamLog,
    watcher: StatusWatcher,
    thread_id: str,
    cursor: Cursor,
    closing: asyncio.Event,
) -> AsyncIterator[FeedEvent | None]:
    """The thread's feed from `cursor` on, live, until `closing` is set. Yields None as a keep-alive."""
    seen_turns: set[str] = set()
    async with watcher.watch(thread_id) as watch:
        version = -1
        last_sent = time.monotonic()
        while not closing.is_set():
            sent = False
            if watch.version != version and watch.status:
                version = watch.version
                status = watch.status
                for turn_id in [*([status["running_turn_id"]] if status.get("running_turn_id") else []),
                                *status.get("queued_turn_ids", [])]:
                    if turn_id not in seen_turns:
                        seen_turns.add(turn_id)
                        queued = turn_id != status.get("running_turn_id")
                        yield FeedEvent("turn", {"turn_id": turn_id, "phase": "accepted", "queued": queued})
                yield FeedEvent("status", dict(status))
                sent = True
            for event in read_after(store, log, thread_id, cursor):
                cursor = event.cursor or cursor
                if event.event == "turn":
                    seen_turns.add(event.data["turn_id"])
                    watcher.poke(thread_id)  # the workflow's status changes now: ask it again soon
                yield event
                sent = True
            now = time.monotonic()
            if sent:
                last_sent = now
            elif now - last_sent > KEEPALIVE_SECONDS:
                last_sent = now
                yield None
            await asyncio.sleep(POLL_SECONDS)
