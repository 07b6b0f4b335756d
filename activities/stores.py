"""The one place that picks a room's store backends: SQLite files on this machine (the default), or the PostgreSQL
database that `--thread-store-url` names, shared by every agent process of the room."""

from __future__ import annotations

from threadline.activities.stream_log import StreamLog
from threadline.activities.thread_store import ThreadStore


def is_shared_url(url: str | None) -> bool:
    return bool(url and url.strip())


def open_thread_store(room: str, url: str | None = None) -> ThreadStore:
    """The room's thread store: the SQLite file on this machine, or the PostgreSQL database at `url`
    (`AgentSpec.thread_store_url`)."""
    if not is_shared_url(url):
        return ThreadStore.for_room(room)
    # psycopg loads only for rooms that use PostgreSQL: it costs every CLI command a tenth of a second.
    from threadline.activities.pg_store import PgThreadStore, opened

    return opened(PgThreadStore, url.strip(), room)  # type: ignore[union-attr, return-value]  # same methods


def open_stream_log(room: str, url: str | None = None) -> StreamLog:
    """The room's stream log: beside the SQLite thread store, or in the PostgreSQL database at `url`."""
    if not is_shared_url(url):
        return StreamLog.for_room(room)
    from threadline.activities.pg_store import PgStreamLog, opened

    return opened(PgStreamLog, url.strip(), room)  # type: ignore[union-attr, return-value]  # same methods
