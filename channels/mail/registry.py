"""The mail registry: mailboxes (address → room, queue), inbound mail received, the Message-ID → thread index, who
takes part in each mail thread and the replies sent. `open_mail_store` picks the backend as the thread store does:
`MailStore`, one SQLite file `THREADLINE_HOME/mail.sqlite3` shared by the processes of one machine, or, with
`--thread-store-url postgresql://...`, `PgMailStore` (registry_pg.py) in that database, shared by every machine."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from threadline.activities.storage import threadline_home
from threadline.channels.mail.addresses import (
    Mailbox,
    MailboxExists,
    MailboxNotFound,
    new_mailbox,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mailboxes (
    address TEXT PRIMARY KEY, room TEXT NOT NULL, queue TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inbound (
    job_key TEXT PRIMARY KEY, mailbox TEXT NOT NULL, message_id TEXT NOT NULL, sender TEXT NOT NULL,
    subject TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, eml_path TEXT, received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS message_threads (
    room TEXT NOT NULL, message_id TEXT NOT NULL, thread_id TEXT NOT NULL, direction TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (room, message_id)
);
CREATE TABLE IF NOT EXISTS sent (
    message_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, recipients TEXT NOT NULL, sent_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS thread_participants (
    room TEXT NOT NULL, thread_id TEXT NOT NULL, address TEXT NOT NULL, PRIMARY KEY (room, thread_id, address)
);
"""


class MailRegistry(Protocol):
    """What the SMTP server, the mail activities, the send_email tool and `threadline mailbox` use. Every method
    blocks: async callers run them in a thread."""

    def create_mailbox(self, address: str, room: str, queue: str | None = None) -> Mailbox: ...
    def mailbox(self, address: str) -> Mailbox | None: ...
    def mailboxes(self, room: str | None = None) -> list[Mailbox]: ...
    def delete_mailbox(self, address: str) -> None: ...
    def inbound_status(self, job_key: str) -> str | None: ...
    def record_inbound(self, job_key: str, mailbox: str, message_id: str, sender: str, subject: str, status: str,
                       reason: str | None = None, eml_path: str | None = None) -> None: ...
    def inbound(self, mailbox: str | None = None) -> list[dict[str, Any]]: ...
    def remember(self, room: str, message_id: str, thread_id: str, direction: str) -> None: ...
    def thread_of(self, room: str, ids: Iterable[str]) -> str | None: ...
    def add_participants(self, room: str, thread_id: str, addresses: Iterable[str]) -> None: ...
    def is_participant(self, room: str, thread_id: str, address: str) -> bool: ...
    def was_sent(self, message_id: str) -> bool: ...
    def mark_sent(self, message_id: str, thread_id: str, recipients: list[str]) -> None: ...


def open_mail_store(url: str | None = None) -> MailRegistry:
    """The registry beside the thread store: PostgreSQL at `url` (`AgentSpec.thread_store_url`), else this machine's
    SQLite file."""
    if not (url and url.strip()):
        return MailStore.default()
    # psycopg loads only where PostgreSQL is used.
    from threadline.channels.mail.registry_pg import PgMailStore

    key = url.strip()
    if key not in _opened:
        _opened[key] = PgMailStore(key)
    return _opened[key]


_opened: dict[str, MailRegistry] = {}


class MailStore:
    """SQLite in WAL mode: the SMTP server and the agents of one machine share it. Agents on several machines share
    a PostgreSQL registry instead (`--thread-store-url`), and one room storage for the .eml files (`--storage-url`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    @classmethod
    def default(cls) -> MailStore:
        return cls(threadline_home() / "mail.sqlite3")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    # Mailboxes.

    def create_mailbox(self, address: str, room: str, queue: str | None = None) -> Mailbox:
        box = new_mailbox(address, room, queue, time.time())
        try:
            self._db().execute(
                "INSERT INTO mailboxes (address, room, queue, created_at) VALUES (?,?,?,?)",
                (box.address, box.room, box.queue, box.created_at),
            )
        except sqlite3.IntegrityError:
            existing = self.mailbox(box.address)
            where = f" (room {existing.room}, queue {existing.queue})" if existing else ""
            raise MailboxExists(f"mailbox {box.address} is already registered{where}") from None
        return box

    def mailbox(self, address: str) -> Mailbox | None:
        row = self._db().execute(
            "SELECT address, room, queue, created_at FROM mailboxes WHERE address=?", (address.strip().lower(),)
        ).fetchone()
        return Mailbox(*row) if row else None

    def mailboxes(self, room: str | None = None) -> list[Mailbox]:
        query, args = "SELECT address, room, queue, created_at FROM mailboxes", []
        if room:
            query, args = query + " WHERE room=?", [room]
        return [Mailbox(*row) for row in self._db().execute(query + " ORDER BY address", args)]

    def delete_mailbox(self, address: str) -> None:
        if not self._db().execute("DELETE FROM mailboxes WHERE address=?", (address.strip().lower(),)).rowcount:
            raise MailboxNotFound(f"there is no mailbox {address.strip()}")

    # Inbound mail.

    def inbound_status(self, job_key: str) -> str | None:
        row = self._db().execute("SELECT status FROM inbound WHERE job_key=?", (job_key,)).fetchone()
        return row[0] if row else None

    def record_inbound(
        self, job_key: str, mailbox: str, message_id: str, sender: str, subject: str, status: str,
        reason: str | None = None, eml_path: str | None = None,
    ) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO inbound (job_key, mailbox, message_id, sender, subject, status, reason, eml_path,"
            " received_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (job_key, mailbox, message_id, sender, subject, status, reason, eml_path, time.time()),
        )

    def inbound(self, mailbox: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT job_key, mailbox, message_id, sender, subject, status, reason, eml_path, received_at FROM inbound"
        args = [mailbox] if mailbox else []
        rows = self._db().execute(query + (" WHERE mailbox=?" if mailbox else "") + " ORDER BY received_at", args)
        names = ("job_key", "mailbox", "message_id", "sender", "subject", "status", "reason", "eml_path", "received_at")
        return [dict(zip(names, row)) for row in rows]

    # Threading.

    def remember(self, room: str, message_id: str, thread_id: str, direction: str) -> None:
        self._db().execute(
            "INSERT OR IGNORE INTO message_threads (room, message_id, thread_id, direction, created_at)"
            " VALUES (?,?,?,?,?)",
            (room, message_id, thread_id, direction, time.time()),
        )

    def thread_of(self, room: str, ids: Iterable[str]) -> str | None:
        """The thread of the first id known (callers pass the most specific first)."""
        for message_id in ids:
            row = self._db().execute(
                "SELECT thread_id FROM message_threads WHERE room=? AND message_id=?", (room, message_id)
            ).fetchone()
            if row:
                return row[0]
        return None

    # Who takes part in a mail thread: the addresses of its mails (From, To, Cc) and of what the agent sent.

    def add_participants(self, room: str, thread_id: str, addresses: Iterable[str]) -> None:
        self._db().executemany(
            "INSERT OR IGNORE INTO thread_participants (room, thread_id, address) VALUES (?,?,?)",
            [(room, thread_id, a.strip().lower()) for a in addresses if a and a.strip()],
        )

    def is_participant(self, room: str, thread_id: str, address: str) -> bool:
        address = address.strip().lower()
        if self._db().execute("SELECT 1 FROM thread_participants WHERE room=? AND thread_id=? AND address=?",
                              (room, thread_id, address)).fetchone():
            return True
        # Threads from before participants were recorded: whoever the agent wrote to in the thread.
        rows = self._db().execute("SELECT recipients FROM sent WHERE thread_id=?", (thread_id,)).fetchall()
        return any(address in (r.strip().lower() for r in row[0].split(",")) for row in rows)

    # Replies sent.

    def was_sent(self, message_id: str) -> bool:
        return self._db().execute("SELECT 1 FROM sent WHERE message_id=?", (message_id,)).fetchone() is not None

    def mark_sent(self, message_id: str, thread_id: str, recipients: list[str]) -> None:
        self._db().execute(
            "INSERT OR IGNORE INTO sent (message_id, thread_id, recipients, sent_at) VALUES (?,?,?,?)",
            (message_id, thread_id, ", ".join(recipients), time.time()),
        )
        self.add_participants(thread_id.partition("/")[0], thread_id, recipients)
