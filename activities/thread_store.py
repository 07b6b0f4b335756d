"""The thread store: every item of every thread, by sequence number, in one SQLite file per room.

Writes are keyed by (thread_id, seq) and replace what is there, so a retried activity never writes an item twice.
SQLite in WAL mode lets several agent processes on one machine share a room; agents on several machines share a
PostgreSQL database instead (`--thread-store-url postgresql://...`, activities/pg_store.py, same methods). Callers
open a room's store with `activities.stores.open_thread_store(room, url)`; `ThreadStore.for_room` is the SQLite file only.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from threadline.activities import local_writes
from threadline.activities.storage import room_dir
from threadline.models.thread import ThreadInfo, ThreadItem, ThreadStatus, Usage, UsageRow, parse_items

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    agent TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'idle',
    channel TEXT NOT NULL DEFAULT 'chat',
    created_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    usage TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS items (
    thread_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    turn_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (thread_id, seq)
);
CREATE TABLE IF NOT EXISTS conversations (
    key TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_thread ON conversations (thread_id, created_at);
-- A turn's items by seq: the redelivery check looks up one turn's answer without walking the thread's items.
CREATE INDEX IF NOT EXISTS items_turn_seq ON items (thread_id, turn_id, seq);
DROP INDEX IF EXISTS items_turn;
-- Ordered by rowid within a thread: `changes` and `position` seek to a write position.
CREATE INDEX IF NOT EXISTS items_position ON items (thread_id);
"""

_NAME_LIMIT = 60


def _add_column(db: sqlite3.Connection, table: str, column: str, kind: str) -> None:
    """Schema growth for files written by older versions: columns are only ever added."""
    if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
        try:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as e:  # another process added it first
            if "duplicate column" not in str(e):
                raise


def display_name(text: str) -> str:
    words = re.sub(r"\s+", " ", text).strip()
    return words if len(words) <= _NAME_LIMIT else words[: _NAME_LIMIT - 1].rstrip() + "…"


def optional_filters(conditions: dict[str, object], placeholder: str) -> tuple[str, list[object]]:
    """The optional filters of a store query: ` AND <column and operator><placeholder>` for each condition whose
    value is given, and those values, in the backend's placeholder style (`?` or `%s`)."""
    given = {condition: value for condition, value in conditions.items() if value is not None}
    return "".join(f" AND {condition}{placeholder}" for condition in given), list(given.values())


class ThreadStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA)
            _add_column(db, "threads", "archived_at", "REAL")

    @classmethod
    def for_room(cls, room: str) -> ThreadStore:
        return cls(room_dir(room) / "threads.sqlite3")

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def append(
        self,
        thread_id: str,
        items: Iterable[ThreadItem],
        *,
        room: str,
        agent: str,
        channel: str = "chat",
        status: ThreadStatus | None = None,
    ) -> None:
        """Writes items (replacing any with the same seq) and touches the thread's row, in one transaction."""
        now = time.time()
        items = list(items)
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT name FROM threads WHERE thread_id=?", (thread_id,)).fetchone()
            if row is None:
                first_text = next((i.text for i in items if i.type == "user" and i.text), "")
                db.execute(
                    "INSERT INTO threads (thread_id, room, agent, name, status, channel, created_at, modified_at)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    (thread_id, room, agent, display_name(first_text), status or "idle", channel, now, now),
                )
            elif not row[0]:
                first_text = next((i.text for i in items if i.type == "user" and i.text), "")
                if first_text:
                    db.execute("UPDATE threads SET name=? WHERE thread_id=?", (display_name(first_text), thread_id))
            db.executemany(
                "INSERT OR REPLACE INTO items (thread_id, seq, turn_id, type, body, created_at) VALUES (?,?,?,?,?,?)",
                [
                    (thread_id, i.seq, i.turn_id, i.type, i.model_dump_json(), i.created_at)
                    for i in (i if i.created_at else i.model_copy(update={"created_at": now}) for i in items)
                ],
            )
            db.execute(
                "UPDATE threads SET modified_at=?, status=COALESCE(?, status) WHERE thread_id=?",
                (now, status, thread_id),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        local_writes.written()

    def ensure_thread(self, thread_id: str, *, room: str, agent: str, channel: str = "chat", name: str = "") -> None:
        """Creates the thread's row (no items yet) unless it exists; its first message names it when `name` is empty."""
        now = time.time()
        self._connect().execute(
            "INSERT OR IGNORE INTO threads (thread_id, room, agent, name, status, channel, created_at, modified_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (thread_id, room, agent, display_name(name) if name else "", "idle", channel, now, now),
        )

    def archive(self, thread_id: str, archived: bool = True) -> bool:
        """Hides a thread from listings that leave out archived threads (its items stay). False: no such thread."""
        cursor = self._connect().execute(
            "UPDATE threads SET archived_at=? WHERE thread_id=?", (time.time() if archived else None, thread_id)
        )
        return cursor.rowcount > 0

    def changes(self, thread_id: str, *, after: int = 0) -> list[tuple[int, ThreadItem]]:
        """Items written (or rewritten) after position `after`, in write order, with their positions: a cursor for
        readers that follow a thread (write order is commit order, since SQLite serialises writers)."""
        rows = self._connect().execute(
            "SELECT rowid, body FROM items WHERE thread_id=? AND rowid>? ORDER BY rowid", (thread_id, after)
        )
        return [(rowid, ThreadItem.model_validate_json(body)) for rowid, body in rows]

    def position(self, thread_id: str) -> tuple[int, float]:
        """The latest write position of a thread's items and the newest item time (0, 0.0 when it has none)."""
        row = self._connect().execute(
            "SELECT MAX(rowid), MAX(created_at) FROM items WHERE thread_id=?", (thread_id,)
        ).fetchone()
        return (row[0] or 0, row[1] or 0.0)

    def changed_threads(self, after: int | None) -> tuple[int, set[str]]:
        """The room's latest write position and the threads with items written after `after` (None: just the
        position). One indexed range read however many threads are followed: the chat feed's single poller."""
        db = self._connect()
        if after is None:
            return db.execute("SELECT COALESCE(MAX(rowid), 0) FROM items").fetchone()[0], set()
        rows = db.execute("SELECT thread_id, MAX(rowid) FROM items WHERE rowid>? GROUP BY thread_id", (after,)).fetchall()
        return max([after, *(r[1] for r in rows)]), {r[0] for r in rows}

    def rename(self, thread_id: str, name: str) -> None:
        self._connect().execute("UPDATE threads SET name=? WHERE thread_id=?", (display_name(name), thread_id))

    def usage_rows(self, *, agent: str | None = None, since: float | None = None) -> list[UsageRow]:
        query = ("SELECT i.thread_id, t.agent, t.channel, i.created_at, json_extract(i.body, '$.data.model'),"
                 " json_extract(i.body, '$.data.usage') FROM items i JOIN threads t ON t.thread_id = i.thread_id"
                 " WHERE i.type IN ('assistant', 'summary')")
        args: list[object] = []
        filters, values = optional_filters({"t.agent=": agent, "i.created_at>=": since}, "?")
        query += filters
        args += values
        return [UsageRow(thread_id=r[0], agent=r[1], channel=r[2], at=r[3], model=r[4] or "",
                         usage=Usage.model_validate_json(r[5]) if r[5] else Usage())
                for r in self._connect().execute(query + " ORDER BY i.created_at", args)]

    def remember_conversation(self, key: str, thread_id: str) -> None:
        self._connect().execute("INSERT OR REPLACE INTO conversations (key, thread_id, created_at) VALUES (?,?,?)",
                                (key, thread_id, time.time()))

    def conversation(self, key: str) -> tuple[str, bool] | None:
        db = self._connect()
        row = db.execute("SELECT thread_id FROM conversations WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        (head,) = db.execute("SELECT key FROM conversations WHERE thread_id=? ORDER BY created_at DESC, rowid DESC "
                             "LIMIT 1", (row[0],)).fetchone()
        return row[0], head == key

    def items(self, thread_id: str, *, before_seq: int | None = None, limit: int | None = None,
              item_type: str | None = None, turn_id: str | None = None) -> list[ThreadItem]:
        """Items in order, of one type and one turn when given; with `limit`, the last `limit` of them."""
        query = "SELECT seq, body FROM items WHERE thread_id=?"
        args: list[object] = [thread_id]
        filters, values = optional_filters({"seq<": before_seq, "type=": item_type, "turn_id=": turn_id}, "?")
        query += filters
        args += values
        if limit is not None:
            query = f"SELECT seq, body FROM ({query} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
            args.append(limit)
        else:
            query += " ORDER BY seq"
        return parse_items([body for (_, body) in self._connect().execute(query, args)])

    def thread(self, thread_id: str) -> ThreadInfo | None:
        found = self.threads(thread_id=thread_id)
        return found[0] if found else None

    def thread_agent(self, thread_id: str) -> str | None:
        """The agent of the thread (None: no such thread), without `thread`'s sums over all its items."""
        row = self._connect().execute("SELECT agent FROM threads WHERE thread_id=?", (thread_id,)).fetchone()
        return row[0] if row else None

    def threads(
        self,
        *,
        agent: str | None = None,
        thread_id: str | None = None,
        limit: int = 1000,
        offset: int = 0,
        archived: bool | None = None,
    ) -> list[ThreadInfo]:
        """Newest first; `archived=False` leaves archived threads out, `True` lists only them, None lists all."""
        query = (
            "SELECT t.thread_id, t.room, t.agent, t.name, t.status, t.channel, t.created_at, t.modified_at,"
            " (SELECT COUNT(*) FROM items i WHERE i.thread_id=t.thread_id),"
            " (SELECT json_group_array(json_extract(i.body, '$.data.usage')) FROM items i"
            "  WHERE i.thread_id=t.thread_id AND i.type IN ('assistant', 'summary')),"
            " t.archived_at"
            " FROM threads t WHERE 1=1"
        )
        args: list[object] = []
        filters, values = optional_filters({"t.agent=": agent, "t.thread_id=": thread_id}, "?")
        query += filters
        args += values
        if archived is not None:
            query += " AND t.archived_at IS NOT NULL" if archived else " AND t.archived_at IS NULL"
        query += " ORDER BY t.modified_at DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        result = []
        for row in self._connect().execute(query, args):
            usage = sum((Usage.model_validate(u) for u in json.loads(row[9] or "[]") if u), Usage())
            result.append(
                ThreadInfo(
                    thread_id=row[0], room=row[1], agent=row[2], name=row[3], status=row[4], channel=row[5],
                    created_at=row[6], modified_at=row[7], items=row[8], usage=usage, archived=row[10] is not None,
                )
            )
        return result
