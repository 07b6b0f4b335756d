"""The one place that picks a room's store backends: SQLite files on this machine (the default), or the PostgreSQL
database that `--thread-store-url` names, shared by every agent process of the room."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from threadline.activities.stream_log import EventKind, StreamEvent, StreamLog
from threadline.activities.thread_store import ThreadStore
from threadline.models.thread import ThreadInfo, ThreadItem, ThreadStatus, UsageRow


class RoomThreadStore(Protocol):
    """A room's threads and their items, whatever the backend (`ThreadStore`: SQLite; `PgThreadStore`). Every method
    blocks: async callers run them in a thread (`asyncio.to_thread`), never on the event loop."""

    def append(self, thread_id: str, items: Iterable[ThreadItem], *, room: str, agent: str, channel: str = "chat",
               status: ThreadStatus | None = None) -> None: ...
    def ensure_thread(self, thread_id: str, *, room: str, agent: str, channel: str = "chat",
                      name: str = "") -> None: ...
    def archive(self, thread_id: str, archived: bool = True) -> bool: ...
    def changes(self, thread_id: str, *, after: int = 0) -> list[tuple[int, ThreadItem]]: ...
    def position(self, thread_id: str) -> tuple[int, float]: ...
    def changed_threads(self, after: int | None) -> tuple[int, set[str]]: ...
    def rename(self, thread_id: str, name: str) -> None: ...
    def usage_rows(self, *, agent: str | None = None, since: float | None = None) -> list[UsageRow]:
        """Every model call's usage (answers and summaries), oldest first: what the cost ledger prices."""
    def remember_conversation(self, key: str, thread_id: str) -> None: ...
    def conversation(self, key: str) -> tuple[str, bool] | None:
        """The thread a conversation key (an OpenAI-compatible client's message history) leads to, and whether it
        is that thread's newest key (False: the thread went on since, so the client's history is a fork)."""
    def items(self, thread_id: str, *, before_seq: int | None = None, limit: int | None = None,
              item_type: str | None = None, turn_id: str | None = None) -> list[ThreadItem]: ...
    def thread(self, thread_id: str) -> ThreadInfo | None: ...
    def thread_agent(self, thread_id: str) -> str | None: ...
    def threads(self, *, agent: str | None = None, thread_id: str | None = None, limit: int = 1000, offset: int = 0,
                archived: bool | None = None) -> list[ThreadInfo]: ...


class RoomStreamLog(Protocol):
    """A room's short-lived stream events (deltas, retries, tools), whatever the backend; blocking like the store."""

    def publish(self, thread_id: str, turn_id: str, attempt: int, kind: EventKind, data: dict[str, Any]) -> None: ...
    def events(self, thread_id: str, *, after_id: int = 0, turn_id: str | None = None) -> list[StreamEvent]: ...
    def last_id_until(self, thread_id: str, created_at: float) -> int: ...
    def changed_threads(self, after: int | None) -> tuple[int, set[str]]: ...
    def prune(self, older_than: float = ...) -> None: ...


def is_shared_url(url: str | None) -> bool:
    return bool(url and url.strip())


def open_thread_store(room: str, url: str | None = None) -> RoomThreadStore:
    """The room's thread store: the SQLite file on this machine, or the PostgreSQL database at `url`
    (`AgentSpec.thread_store_url`)."""
    if not is_shared_url(url):
        return ThreadStore.for_room(room)
    # psycopg loads only for rooms that use PostgreSQL: it costs every CLI command a tenth of a second.
    from threadline.activities.pg_store import PgThreadStore, opened

    return opened(PgThreadStore, url.strip(), room)  # type: ignore[union-attr]


def open_stream_log(room: str, url: str | None = None) -> RoomStreamLog:
    """The room's stream log: beside the SQLite thread store, or in the PostgreSQL database at `url`."""
    if not is_shared_url(url):
        return StreamLog.for_room(room)
    from threadline.activities.pg_store import PgStreamLog, opened

    return opened(PgStreamLog, url.strip(), room)  # type: ignore[union-attr]
