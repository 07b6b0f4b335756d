"""A thread's live feed for HTTP clients: stream-log events (deltas, retries, tools) and thread-store items (messages,
results, errors), merged in the order they happened, plus the workflow's status (running and queued turns).

Both sources live in the room's SQLite file, so any agent process on the machine can serve any thread's feed. A
position in the feed is a `Cursor`: the last stream-log event id and the last item write position the client has
seen, written `S-I` (the SSE event id), so a client that reconnects with `Last-Event-ID` gets exactly what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client
from threadline.activities import local_writes
from threadline.activities.stores import RoomStreamLog, RoomThreadStore
from threadline.activities.stream_log import StreamEvent
from threadline.channels.delivery import thread_snapshot
from threadline.models.thread import ThreadItem

POLL_SECONDS = 0.02
"""How often the feed's poller asks the store what changed while the room is busy, for writes of other processes
(this process's own writes wake it at once: activities/local_writes.py)."""
QUIET_POLL_SECONDS = 0.1
"""How often it asks once nothing has changed for QUIET_AFTER_SECONDS (a turn's first write, its `accepted` event,
comes well before its first delta, so streaming runs at POLL_SECONDS)."""
QUIET_AFTER_SECONDS = 2.0
MIN_TICK_SECONDS = 0.005
"""The least time from one tick to the next, however often this process writes: deltas of many turns are read in
one tick, not in one each."""
STATUS_POLL_SECONDS = 0.5
"""How soon a thread's status is asked again after it changed, or after a steer, an interrupt or a decision.
Each quiet ask doubles the wait, up to STATUS_REFRESH_SECONDS: a turn's own events (accepted, started, ended) set the
status without a query (`StatusWatcher.observe`), so the polls only catch what no event announces (a turn queued by
another process, a wait for approval). A query is a workflow task on the server and the worker; 50 streaming
threads polled twice a second were a third of both processes' CPU."""
STATUS_REFRESH_SECONDS = 15.0
STATUS_QUERY_TIMEOUT = 3.0
KEEPALIVE_SECONDS = 15.0
IDLE_WAKE_SECONDS = 5.0
"""A quiet follower wakes this often on its own (to send keep-alives); news wakes it at once."""

log = logging.getLogger("threadline.chat_feed")


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
    origin: tuple[str, int] | None = None
    """The source ("stream" or "items") and position of what the event shows; on the last event of its group."""

    def sse(self) -> str:
        import json

        lines = [f"id: {self.cursor}"] if self.cursor is not None else []
        lines.append(f"event: {self.event}")
        lines.append("data: " + json.dumps(self.data, ensure_ascii=False, separators=(",", ":")))
        return "\n".join(lines) + "\n\n"


def current_cursor(store: RoomThreadStore, log: RoomStreamLog, thread_id: str) -> Cursor:
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
    if event.kind == "refused":
        return "turn", {"turn_id": event.turn_id, "phase": "ended", "status": "failed", **event.data}
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


def read_after(store: RoomThreadStore, log: RoomStreamLog, thread_id: str, cursor: Cursor) -> list[FeedEvent]:
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
            out.append(FeedEvent(name, data, Cursor(stream, items), ("stream", position)))
        else:
            items = max(items, position)
            group = _item_events(value)
            # One position per item: only the group's last event carries it, so a client that reconnects after
            # any of them gets none of them twice... or all of them again when it missed the last one.
            for n, (name, data) in enumerate(group):
                last = n == len(group) - 1
                out.append(FeedEvent(name, data, Cursor(stream, items) if last else None,
                                     ("items", position) if last else None))
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

    def __init__(self, client: Client, store: RoomThreadStore) -> None:
        self.client, self.store = client, store
        self._watches: dict[str, _Watch] = {}
        self.on_change: Callable[[str], None] | None = None
        """Called with the thread id when a thread's status changes (the feed wakes its followers)."""

    async def status(self, thread_id: str) -> dict[str, Any]:
        """The thread's status now: from the workflow when it answers, else from the store."""
        try:
            snap = await asyncio.wait_for(thread_snapshot(self.client, thread_id), STATUS_QUERY_TIMEOUT)
        except Exception:  # noqa: BLE001 - no workflow yet, or no worker to answer: the store knows the rest
            info = await asyncio.to_thread(self.store.thread, thread_id)
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
        """Someone just delivered a signal: poll again soon."""
        watch = self._watches.get(thread_id)
        if watch is not None:
            watch.changed.set()

    def observe(self, thread_id: str, events: list[FeedEvent]) -> None:
        """The status that the thread's turn events imply, at once and without a query. Asking the workflow after
        every turn event cost three queries per turn: with 50 streaming threads, about 40 ms more to the first delta
        (bench.chat). The polls confirm it, and a poll that finds otherwise wins."""
        watch = self._watches.get(thread_id)
        if watch is None or not watch.status:
            return
        status = {**watch.status, "queued_turn_ids": list(watch.status["queued_turn_ids"])}
        for event in events:
            if event.event == "turn":
                _follow_turn(status, event.data)
        if status != watch.status:
            watch.status = status
            watch.version += 1
            if self.on_change is not None:
                self.on_change(thread_id)

    async def _poll(self, thread_id: str, watch: _Watch) -> None:
        wait = STATUS_POLL_SECONDS
        while True:
            watch.changed.clear()  # before the query: a poke during it may be news the query missed, and stays set
            status = await self.status(thread_id)
            if status != watch.status:
                watch.status = status
                watch.version += 1
                wait = STATUS_POLL_SECONDS
                if self.on_change is not None:
                    self.on_change(thread_id)
            elif not watch.changed.is_set():
                wait = min(2 * wait, STATUS_REFRESH_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), wait)
                wait = STATUS_POLL_SECONDS
            await asyncio.sleep(0.05)


def _follow_turn(status: dict[str, Any], turn: dict[str, Any]) -> None:
    """What the workflow's snapshot says after this turn event: a turn accepted behind a running one waits in the
    queue (one accepted by an idle thread starts next, and its `started` says so), the queue's head starts, and a
    thread whose turn ended is idle (or failed) unless more turns wait."""
    turn_id, queued = turn["turn_id"], status["queued_turn_ids"]
    if turn["phase"] == "accepted":
        if status["running_turn_id"] not in (None, turn_id) and turn_id not in queued:
            queued.append(turn_id)
        return
    if turn_id in queued:
        queued.remove(turn_id)
    if turn["phase"] == "started":
        status.update(status="running", running_turn_id=turn_id)
    elif turn["phase"] == "ended" and status["running_turn_id"] in (None, turn_id):
        status.update(running_turn_id=None,
                      status="running" if queued else "failed" if turn.get("status") == "failed" else "idle")


@dataclass
class _Group:
    """The events of one stream event or one item, and where that sits in its source."""

    source: str
    position: int
    events: list[FeedEvent]

    def seen_by(self, cursor: Cursor) -> bool:
        return self.position <= (cursor.stream if self.source == "stream" else cursor.items)


def _groups(events: list[FeedEvent]) -> list[_Group]:
    groups: list[_Group] = []
    pending: list[FeedEvent] = []
    for event in events:
        pending.append(event)
        if event.origin is not None:
            groups.append(_Group(*event.origin, pending))
            pending = []
    return groups


@dataclass
class _Tail:
    """What one poller has read of a followed thread: recent groups, for every follower of the thread."""

    cursor: Cursor
    users: int = 0
    offset: int = 0
    """The absolute index of `groups[0]`: followers keep absolute indices, so trimming does not move them."""
    groups: list[_Group] = field(default_factory=list)
    waiters: set[asyncio.Event] = field(default_factory=set)

    def wake(self) -> None:
        for waiter in self.waiters:
            waiter.set()


class RoomFeed:
    """Every live feed the agent process serves, read by one poller: each tick asks the room's stream log and store
    which followed threads changed (two indexed range reads, off the event loop) and reads only those, once for all
    their followers. Idle streams cost nothing per stream; a slow store delays feeds, never the event loop."""

    KEPT_GROUPS = 1000
    """Per thread; a follower further behind than this reads its own way back from its cursor."""

    def __init__(self, store: RoomThreadStore, log: RoomStreamLog, watcher: StatusWatcher) -> None:
        self.store, self.log, self.watcher = store, log, watcher
        self._tails: dict[str, _Tail] = {}
        self._marks: tuple[int, int] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()
        self._changed_at = 0.0
        watcher.on_change = self._wake

    def _wake(self, thread_id: str) -> None:
        tail = self._tails.get(thread_id)
        if tail is not None:
            tail.wake()

    async def read_after(self, thread_id: str, cursor: Cursor) -> list[FeedEvent]:
        return await asyncio.to_thread(read_after, self.store, self.log, thread_id, cursor)

    async def current_cursor(self, thread_id: str) -> Cursor:
        return await asyncio.to_thread(current_cursor, self.store, self.log, thread_id)

    async def follow(self, thread_id: str, cursor: Cursor, closing: asyncio.Event) -> AsyncIterator[FeedEvent | None]:
        """The thread's feed from `cursor` on, until `closing` is set. Yields None whenever it is quiet (the thread's
        status may have changed: see `StatusWatcher.on_change`)."""
        tail = self._tails.get(thread_id)
        if tail is None:
            tail = self._tails[thread_id] = _Tail(cursor)
        wake = asyncio.Event()
        tail.users += 1
        tail.waiters.add(wake)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            index = tail.offset + len(tail.groups)
            # Catch up on our own, then take the shared groups this read did not already cover.
            for event in await self.read_after(thread_id, cursor):
                cursor = event.cursor or cursor
                yield event
            while not closing.is_set():
                if index < tail.offset:
                    for event in await self.read_after(thread_id, cursor):
                        cursor = event.cursor or cursor
                        yield event
                    index = tail.offset + len(tail.groups)
                while index < tail.offset + len(tail.groups):
                    group = tail.groups[index - tail.offset]
                    index += 1
                    if group.seen_by(cursor):
                        continue
                    for event in group.events:
                        cursor = event.cursor or cursor
                        yield event
                wake.clear()
                yield None
                if index == tail.offset + len(tail.groups):
                    await _until_either(wake, closing, IDLE_WAKE_SECONDS)
        finally:
            tail.users -= 1
            tail.waiters.discard(wake)
            if tail.users == 0:
                self._tails.pop(thread_id, None)
                if not self._tails:
                    self._poked.set()  # the poller ends now, not after its wait

    def poke(self) -> None:
        """A turn was just delivered here: poll at the busy pace from now on."""
        self._changed_at = time.monotonic()
        self._poked.set()

    async def _poll(self) -> None:
        self._changed_at = time.monotonic()
        written = local_writes.listen()
        try:
            while self._tails:
                await self._poll_once(written)
        finally:
            local_writes.forget(written)

    async def _poll_once(self, written: asyncio.Event) -> None:
        """One tick, then the wait for the next: a write of this process (a turn's deltas, from its model activity)
        ends the wait at once, after at least MIN_TICK_SECONDS; other processes' writes are found at the pace."""
        ticked = time.monotonic()
        written.clear()  # before the tick: a write during it is news for the next one
        try:
            found = await asyncio.to_thread(self._tick, {t: tail.cursor for t, tail in self._tails.items()})
        except Exception:  # noqa: BLE001 - a store that fails now may answer next tick; followers wait
            log.warning("chat feed: reading the room's store failed", exc_info=True)
            found = {}
        if any(found.values()):
            self._changed_at = time.monotonic()
        for thread_id, events in found.items():
            tail = self._tails.get(thread_id)
            if tail is None or not events:
                continue
            tail.cursor = events[-1].cursor or tail.cursor
            tail.groups += _groups(events)
            if len(tail.groups) > self.KEPT_GROUPS:
                cut = len(tail.groups) - self.KEPT_GROUPS
                del tail.groups[:cut]
                tail.offset += cut
            self.watcher.observe(thread_id, events)
            tail.wake()
        self._poked.clear()
        quiet = time.monotonic() - self._changed_at > QUIET_AFTER_SECONDS
        await _until_either(written, self._poked, QUIET_POLL_SECONDS if quiet else POLL_SECONDS)
        if (rest := MIN_TICK_SECONDS - (time.monotonic() - ticked)) > 0:
            await asyncio.sleep(rest)

    def _tick(self, followed: dict[str, Cursor]) -> dict[str, list[FeedEvent]]:
        if self._marks is None:
            self._marks = (self.log.changed_threads(None)[0], self.store.changed_threads(None)[0])
            return {t: read_after(self.store, self.log, t, c) for t, c in followed.items()}
        stream_mark, streamed = self.log.changed_threads(self._marks[0])
        item_mark, written = self.store.changed_threads(self._marks[1])
        self._marks = (stream_mark, item_mark)
        return {t: read_after(self.store, self.log, t, followed[t]) for t in (streamed | written) & followed.keys()}


async def _until_either(first: asyncio.Event, second: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def follow(
    feed: RoomFeed,
    thread_id: str,
    cursor: Cursor,
    closing: asyncio.Event,
) -> AsyncIterator[FeedEvent | None]:
    """The thread's feed from `cursor` on, live, with its status, until `closing` is set. Yields None as a
    keep-alive."""
    seen_turns: set[str] = set()
    async with feed.watcher.watch(thread_id) as watch:
        version = -1
        last_sent = time.monotonic()
        events = feed.follow(thread_id, cursor, closing)
        try:
            async for event in events:
                now = time.monotonic()
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
                    last_sent = now
                if event is None:
                    if now - last_sent > KEEPALIVE_SECONDS:
                        last_sent = now
                        yield None
                    continue
                if event.event == "turn":
                    seen_turns.add(event.data["turn_id"])
                last_sent = now
                yield event
        finally:
            await events.aclose()
