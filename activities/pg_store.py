"""The thread store and the stream log on PostgreSQL, so agent processes on several machines share a room's threads.

`--thread-store-url postgresql://user:pass@host:5432/db` (`AgentSpec.thread_store_url`) selects it; one database
serves many rooms (every table is keyed by room). The classes have the public methods and semantics of the SQLite
ones (`ThreadStore`, `StreamLog`), synchronously, with one psycopg connection per Python thread:

- items are keyed by (room, thread_id, seq) and an upsert replaces them, so a retried activity writes an item once;
- `changes`/`position` use `position`, a value from one sequence given to every insert *and* every rewrite of an
  item, like SQLite's rowid (a replaced row gets a new one);
- stream events have a BIGSERIAL id.

Readers follow a thread by position (`changes(after=...)`, `events(after_id=...)`), so positions must become
visible in increasing order. Postgres hands out sequence values before commit, so two concurrent writers of one
thread could commit out of order and a reader would skip the smaller one; writers of one thread therefore take a
transaction-scoped advisory lock first, which makes a thread's write order its commit order (as SQLite's single
writer does).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from threadline.activities import local_writes
from threadline.activities.stream_log import KEEP_SECONDS, StreamEvent
from threadline.activities.thread_store import display_name, optional_filters
from threadline.models.thread import ThreadInfo, ThreadItem, ThreadStatus, Usage, UsageRow, parse_items

_opened: dict[tuple[type, str, str], Any] = {}
_opened_guard = threading.Lock()


def opened(backend: type, url: str, room: str) -> Any:
    """One store per (kind, url, room) per process, so their connections are reused."""
    key = (backend, url, room)
    with _opened_guard:
        if key not in _opened:
            _opened[key] = backend(url, room)
        return _opened[key]

_SCHEMA_LOCK = 0x7468726C  # advisory lock key serialising schema creation between processes starting together
_ITEMS_LOCK = 1  # advisory lock class of a thread's item writers
_EVENTS_LOCK = 2  # ... and of its stream-log publishers

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS threadline_threads (
        room TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        agent TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'idle',
        channel TEXT NOT NULL DEFAULT 'chat',
        created_at DOUBLE PRECISION NOT NULL,
        modified_at DOUBLE PRECISION NOT NULL,
        archived_at DOUBLE PRECISION,
        PRIMARY KEY (room, thread_id)
    )""",
    "CREATE INDEX IF NOT EXISTS threadline_threads_modified ON threadline_threads (room, modified_at DESC)",
    "CREATE SEQUENCE IF NOT EXISTS threadline_item_position",
    """CREATE TABLE IF NOT EXISTS threadline_items (
        room TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        turn_id TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        position BIGINT NOT NULL DEFAULT nextval('threadline_item_position'),
        PRIMARY KEY (room, thread_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS threadline_items_position ON threadline_items (room, thread_id, position)",
    "CREATE INDEX IF NOT EXISTS threadline_items_turn ON threadline_items (room, thread_id, turn_id)",
    """CREATE TABLE IF NOT EXISTS threadline_conversations (
        room TEXT NOT NULL,
        key TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        position BIGINT NOT NULL DEFAULT nextval('threadline_item_position'),
        PRIMARY KEY (room, key)
    )""",
    "CREATE INDEX IF NOT EXISTS threadline_conversations_thread ON threadline_conversations (room, thread_id, "
    "position)",
    "CREATE INDEX IF NOT EXISTS threadline_items_global_position ON threadline_items (position)",
    """CREATE TABLE IF NOT EXISTS threadline_stream_events (
        id BIGSERIAL PRIMARY KEY,
        room TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        turn_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS threadline_stream_events_thread ON threadline_stream_events (room, thread_id, id)",
    "CREATE INDEX IF NOT EXISTS threadline_stream_events_created ON threadline_stream_events (room, created_at)",
]

_schema_ready: set[str] = set()
_schema_guard = threading.Lock()


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _changed_threads(db: psycopg.Connection[Any], table: str, column: str, room: str,
                     after: int | None) -> tuple[int, set[str]]:
    """The newest `column` value of `table` and the room's threads with rows past `after` (None: just the value):
    what the chat feed's one poller asks each tick."""
    if after is None:
        row = db.execute(f"SELECT COALESCE(MAX({column}), 0) FROM {table}").fetchone()
        return (row[0] if row else 0), set()
    rows = db.execute(f"SELECT thread_id, MAX({column}) FROM {table} WHERE {column}>%s AND room=%s GROUP BY thread_id",
                      (after, room)).fetchall()
    return max([after, *(r[1] for r in rows)]), {r[0] for r in rows}


class ThreadStoreUnavailable(RuntimeError):
    """The shared thread store cannot be reached; the message names its URL without the password."""


class Connections:
    """One autocommit connection per Python thread, reopened when it broke (a restarted server, a dropped link). The
    first use of a URL in a process creates `schema` (every statement is IF NOT EXISTS), under an advisory lock."""

    def __init__(self, url: str, schema: tuple[str, ...] | list[str] = tuple(_SCHEMA)) -> None:
        self.url = url
        self._local = threading.local()
        key = f"{url}#{hash(tuple(schema))}"
        with _schema_guard:
            if key not in _schema_ready:
                try:
                    db = self.get()
                    with db.transaction():
                        db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                        for statement in schema:
                            db.execute(statement)
                except psycopg.Error as e:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
                    raise ThreadStoreUnavailable(f"thread store {redact(url)} is not usable: {reason}") from e
                _schema_ready.add(key)

    def get(self) -> psycopg.Connection[Any]:
        db = getattr(self._local, "db", None)
        if db is None or db.closed or db.broken:
            db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            self._local.db = db
        return db


class PgThreadStore:
    """`ThreadStore` (activities/thread_store.py) on PostgreSQL, for one room."""

    def __init__(self, url: str, room: str) -> None:
        self.url, self.room = url, room
        self._db = Connections(url)

    def _connect(self) -> psycopg.Connection[Any]:
        return self._db.get()

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
        items = [i if i.created_at else i.model_copy(update={"created_at": now}) for i in items]
        first_text = next((i.text for i in items if i.type == "user" and i.text), "")
        db = self._connect()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_ITEMS_LOCK, f"{self.room}/{thread_id}"))
            db.execute(
                "INSERT INTO threadline_threads"
                " (room, thread_id, agent, name, status, channel, created_at, modified_at)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT (room, thread_id) DO UPDATE SET"
                "  name = CASE WHEN threadline_threads.name = '' THEN EXCLUDED.name ELSE threadline_threads.name END,"
                "  modified_at = EXCLUDED.modified_at,"
                "  status = COALESCE(%s, threadline_threads.status)",
                (self.room, thread_id, agent, display_name(first_text), status or "idle", channel, now, now, status),
            )
            if items:
                with db.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO threadline_items (room, thread_id, seq, turn_id, type, body, created_at)"
                        " VALUES (%s,%s,%s,%s,%s,%s,%s)"
                        " ON CONFLICT (room, thread_id, seq) DO UPDATE SET turn_id=EXCLUDED.turn_id,"
                        "  type=EXCLUDED.type, body=EXCLUDED.body, created_at=EXCLUDED.created_at,"
                        "  position=nextval('threadline_item_position')",
                        [(self.room, thread_id, i.seq, i.turn_id, i.type, i.model_dump_json(), i.created_at)
                         for i in items],
                    )
        local_writes.written()

    def ensure_thread(self, thread_id: str, *, room: str, agent: str, channel: str = "chat", name: str = "") -> None:
        """Creates the thread's row (no items yet) unless it exists; its first message names it when `name` is empty."""
        now = time.time()
        self._connect().execute(
            "INSERT INTO threadline_threads (room, thread_id, agent, name, status, channel, created_at, modified_at)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (room, thread_id) DO NOTHING",
            (self.room, thread_id, agent, display_name(name) if name else "", "idle", channel, now, now),
        )

    def archive(self, thread_id: str, archived: bool = True) -> bool:
        """Hides a thread from listings that leave out archived threads (its items stay). False: no such thread."""
        cursor = self._connect().execute(
            "UPDATE threadline_threads SET archived_at=%s WHERE room=%s AND thread_id=%s",
            (time.time() if archived else None, self.room, thread_id),
        )
        return cursor.rowcount > 0

    def changes(self, thread_id: str, *, after: int = 0) -> list[tuple[int, ThreadItem]]:
        """Items written (or rewritten) after position `after`, in write order, with their positions."""
        rows = self._connect().execute(
            "SELECT position, body FROM threadline_items WHERE room=%s AND thread_id=%s AND position>%s"
            " ORDER BY position",
            (self.room, thread_id, after),
        )
        return [(position, ThreadItem.model_validate_json(body)) for position, body in rows]

    def position(self, thread_id: str) -> tuple[int, float]:
        """The latest write position of a thread's items and the newest item time (0, 0.0 when it has none)."""
        row = self._connect().execute(
            "SELECT MAX(position), MAX(created_at) FROM threadline_items WHERE room=%s AND thread_id=%s",
            (self.room, thread_id),
        ).fetchone()
        return (row[0] or 0, row[1] or 0.0) if row else (0, 0.0)

    def changed_threads(self, after: int | None) -> tuple[int, set[str]]:
        """The latest write position and the room's threads with items written after `after` (None: just the
        position), from the global position index."""
        return _changed_threads(self._connect(), "threadline_items", "position", self.room, after)

    def rename(self, thread_id: str, name: str) -> None:
        self._connect().execute(
            "UPDATE threadline_threads SET name=%s WHERE room=%s AND thread_id=%s",
            (display_name(name), self.room, thread_id),
        )

    def usage_rows(self, *, agent: str | None = None, since: float | None = None) -> list[UsageRow]:
        query = ("SELECT i.thread_id, t.agent, t.channel, i.created_at, (i.body::jsonb)->'data'->>'model',"
                 " (i.body::jsonb)->'data'->'usage' FROM threadline_items i JOIN threadline_threads t"
                 " ON t.room = i.room AND t.thread_id = i.thread_id"
                 " WHERE i.room=%s AND i.type IN ('assistant', 'summary')")
        args: list[object] = [self.room]
        filters, values = optional_filters({"t.agent=": agent, "i.created_at>=": since}, "%s")
        query += filters
        args += values
        return [UsageRow(thread_id=r[0], agent=r[1], channel=r[2], at=r[3], model=r[4] or "",
                         usage=Usage.model_validate(r[5]) if r[5] else Usage())
                for r in self._connect().execute(query + " ORDER BY i.created_at", args)]

    def remember_conversation(self, key: str, thread_id: str) -> None:
        self._connect().execute(
            "INSERT INTO threadline_conversations (room, key, thread_id) VALUES (%s, %s, %s) ON CONFLICT (room, key) "
            "DO UPDATE SET thread_id=EXCLUDED.thread_id, position=nextval('threadline_item_position')",
            (self.room, key, thread_id),
        )

    def conversation(self, key: str) -> tuple[str, bool] | None:
        db = self._connect()
        row = db.execute("SELECT thread_id FROM threadline_conversations WHERE room=%s AND key=%s",
                         (self.room, key)).fetchone()
        if row is None:
            return None
        (head,) = db.execute("SELECT key FROM threadline_conversations WHERE room=%s AND thread_id=%s ORDER BY "
                             "position DESC LIMIT 1", (self.room, row[0])).fetchone()
        return row[0], head == key

    def items(self, thread_id: str, *, before_seq: int | None = None, limit: int | None = None,
              item_type: str | None = None, turn_id: str | None = None) -> list[ThreadItem]:
        """Items in order, of one type and one turn when given; with `limit`, the last `limit` of them."""
        query = "SELECT seq, body FROM threadline_items WHERE room=%s AND thread_id=%s"
        args: list[object] = [self.room, thread_id]
        filters, values = optional_filters({"seq<": before_seq, "type=": item_type, "turn_id=": turn_id}, "%s")
        query += filters
        args += values
        if limit is not None:
            query = f"SELECT seq, body FROM ({query} ORDER BY seq DESC LIMIT %s) AS last_items ORDER BY seq"
            args.append(limit)
        else:
            query += " ORDER BY seq"
        return parse_items([body for (_, body) in self._connect().execute(query, args)])

    def thread(self, thread_id: str) -> ThreadInfo | None:
        found = self.threads(thread_id=thread_id)
        return found[0] if found else None

    def thread_agent(self, thread_id: str) -> str | None:
        """The agent of the thread (None: no such thread), without `thread`'s sums over all its items."""
        row = self._connect().execute("SELECT agent FROM threadline_threads WHERE room=%s AND thread_id=%s",
                                      (self.room, thread_id)).fetchone()
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
            " (SELECT COUNT(*) FROM threadline_items i WHERE i.room=t.room AND i.thread_id=t.thread_id),"
            " (SELECT json_agg((i.body::json)->'data'->'usage') FROM threadline_items i"
            "  WHERE i.room=t.room AND i.thread_id=t.thread_id AND i.type IN ('assistant', 'summary')),"
            " t.archived_at"
            " FROM threadline_threads t WHERE t.room=%s"
        )
        args: list[object] = [self.room]
        filters, values = optional_filters({"t.agent=": agent, "t.thread_id=": thread_id}, "%s")
        query += filters
        args += values
        if archived is not None:
            query += " AND t.archived_at IS NOT NULL" if archived else " AND t.archived_at IS NULL"
        query += " ORDER BY t.modified_at DESC LIMIT %s OFFSET %s"
        args += [limit, offset]
        result = []
        for row in self._connect().execute(query, args):
            usage = sum((Usage.model_validate(u) for u in row[9] or [] if u), Usage())
            result.append(
                ThreadInfo(
                    thread_id=row[0], room=row[1], agent=row[2], name=row[3], status=row[4], channel=row[5],
                    created_at=row[6], modified_at=row[7], items=row[8], usage=usage, archived=row[10] is not None,
                )
            )
        return result


class PgStreamLog:
    """`StreamLog` (activities/stream_log.py) on PostgreSQL, for one room."""

    def __init__(self, url: str, room: str) -> None:
        self.url, self.room = url, room
        self._db = Connections(url)

    def _connect(self) -> psycopg.Connection[Any]:
        return self._db.get()

    def publish(self, thread_id: str, turn_id: str, attempt: int, kind: str, data: dict[str, Any]) -> None:
        db = self._connect()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_EVENTS_LOCK, f"{self.room}/{thread_id}"))
            db.execute(
                "INSERT INTO threadline_stream_events (room, thread_id, turn_id, attempt, kind, data, created_at)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (self.room, thread_id, turn_id, attempt, kind, json.dumps(data), time.time()),
            )
        local_writes.written()

    def events(self, thread_id: str, *, after_id: int = 0, turn_id: str | None = None) -> list[Any]:
        query = ("SELECT id, thread_id, turn_id, attempt, kind, data, created_at FROM threadline_stream_events"
                 " WHERE room=%s AND thread_id=%s AND id>%s")
        args: list[Any] = [self.room, thread_id, after_id]
        if turn_id is not None:
            query += " AND turn_id=%s"
            args.append(turn_id)
        return [
            StreamEvent(id=r[0], thread_id=r[1], turn_id=r[2], attempt=r[3], kind=r[4], data=json.loads(r[5]),
                        created_at=r[6])
            for r in self._connect().execute(query + " ORDER BY id", args)
        ]

    def last_id_until(self, thread_id: str, created_at: float) -> int:
        """The id of a thread's last event published at or before `created_at` (0 when none)."""
        row = self._connect().execute(
            "SELECT MAX(id) FROM threadline_stream_events WHERE room=%s AND thread_id=%s AND created_at<=%s",
            (self.room, thread_id, created_at),
        ).fetchone()
        return (row[0] or 0) if row else 0

    def changed_threads(self, after: int | None) -> tuple[int, set[str]]:
        """The latest event id and the room's threads with events after `after` (None: just the id)."""
        return _changed_threads(self._connect(), "threadline_stream_events", "id", self.room, after)

    def prune(self, older_than: float | None = None) -> None:
        cutoff = time.time() - (KEEP_SECONDS if older_than is None else older_than)
        self._connect().execute(
            "DELETE FROM threadline_stream_events WHERE room=%s AND created_at<%s", (self.room, cutoff)
        )
