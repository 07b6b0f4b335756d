"""The chat feed's one poller (channels/chat_feed.RoomFeed): every follower of a thread gets each event once and in
order, a follower that joins late or reconnects with its cursor misses nothing and repeats nothing, and idle
followers cost no reads of their threads however many there are."""

from __future__ import annotations

import asyncio
import time

from threadline.activities.stream_log import StreamLog
from threadline.activities.thread_store import ThreadStore
from threadline.channels import chat_feed
from threadline.channels.chat_feed import Cursor, RoomFeed
from threadline.models.thread import ThreadItem


class CountingStore(ThreadStore):
    reads = 0

    def changes(self, thread_id: str, *, after: int = 0) -> list:
        type(self).reads += 1
        return super().changes(thread_id, after=after)


class NoStatus:
    """The feed without a Temporal status watcher: these tests are about the store side."""

    on_change = None

    def poke(self, thread_id: str) -> None:
        pass

    def observe(self, thread_id: str, events: list) -> None:
        pass


def item(thread_id: str, seq: int, text: str) -> ThreadItem:
    return ThreadItem(seq=seq, turn_id="t1", type="assistant", text=text, created_at=time.time())


async def collect(feed: RoomFeed, thread_id: str, cursor: Cursor, stop: asyncio.Event, out: list) -> None:
    async for event in feed.follow(thread_id, cursor, stop):
        if event is not None:
            out.append(event)


async def until(condition, what: str, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_followers_share_one_poller_and_get_each_event_once(tmp_path) -> None:
    store, log = CountingStore(tmp_path / "room.sqlite3"), StreamLog(tmp_path / "room.sqlite3")
    feed = RoomFeed(store, log, NoStatus())  # type: ignore[arg-type]
    stop = asyncio.Event()
    quiet = [f"room/.threads/a/quiet-{n}" for n in range(50)]
    busy = "room/.threads/a/busy"
    seen: dict[str, list] = {t: [] for t in [*quiet, busy]}
    early = []
    tasks = [asyncio.create_task(collect(feed, t, Cursor(), stop, seen[t])) for t in quiet]
    tasks.append(asyncio.create_task(collect(feed, busy, Cursor(), stop, seen[busy])))
    tasks.append(asyncio.create_task(collect(feed, busy, Cursor(), stop, early)))
    await asyncio.sleep(0.5)
    CountingStore.reads = 0
    await asyncio.sleep(1.0)
    # 51 threads followed and nothing written: no thread was read (a poller per stream would have read ~2,500 times).
    assert CountingStore.reads == 0

    for n in range(5):
        log.publish(busy, "t1", 1, "delta", {"text": f"d{n} "})
    store.append(busy, [item(busy, 1, "d0 d1 d2 d3 d4")], room="room", agent="a")
    await until(lambda: len(early) == 7 and len(seen[busy]) == 7, "both followers saw 5 deltas and the item")
    assert CountingStore.reads <= 3, "the changed thread is read once per tick, not once per follower"

    # A follower that joins now from the cursor after the third delta gets the rest, once.
    late: list = []
    tasks.append(asyncio.create_task(collect(feed, busy, early[2].cursor, stop, late)))
    log.publish(busy, "t1", 1, "delta", {"text": "more"})
    await until(lambda: len(late) == 5 and len(early) == 8, "the late follower caught up and saw the new delta")

    stop.set()
    await asyncio.gather(*tasks)
    assert [e.data.get("text") for e in early if e.event == "delta"] == ["d0 ", "d1 ", "d2 ", "d3 ", "d4 ", "more"]
    assert [(e.event, e.data.get("text")) for e in late] == [
        ("delta", "d3 "), ("delta", "d4 "), ("item", "d0 d1 d2 d3 d4"), ("turn", None), ("delta", "more"),
    ]
    assert [e.cursor for e in late] == [e.cursor for e in early[3:]]
    assert all(seen[t] == [] for t in quiet)


async def test_a_write_of_this_process_reaches_its_followers_at_once(tmp_path, monkeypatch) -> None:
    """The model activity and the HTTP channel of an agent share a process: a delta the activity writes (from a worker
    thread) wakes the feed's poller, which would otherwise look again only after its poll interval (here 30 s)."""
    monkeypatch.setattr(chat_feed, "POLL_SECONDS", 30.0)
    monkeypatch.setattr(chat_feed, "QUIET_POLL_SECONDS", 30.0)
    store, log = ThreadStore(tmp_path / "room.sqlite3"), StreamLog(tmp_path / "room.sqlite3")
    feed = RoomFeed(store, log, NoStatus())  # type: ignore[arg-type]
    thread, stop, seen = "room/.threads/a/t", asyncio.Event(), []
    task = asyncio.create_task(collect(feed, thread, Cursor(), stop, seen))
    await asyncio.to_thread(log.publish, thread, "t1", 1, "delta", {"text": "one "})
    await until(lambda: len(seen) == 1, "the first delta")
    await asyncio.to_thread(log.publish, thread, "t1", 1, "delta", {"text": "two"})
    await asyncio.to_thread(store.append, thread, [item(thread, 1, "one two")], room="room", agent="a")
    await until(lambda: [e.event for e in seen] == ["delta", "delta", "item", "turn"], "the rest of the turn", 5)
    stop.set()
    await task
    await until(lambda: feed._poller is not None and feed._poller.done(), "the poller's end, with its last follower")
