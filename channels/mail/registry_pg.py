"""`PgMailStore`: the mail registry (mailboxes, inbound mail, Message-ID → thread, participants, replies sent) in the
PostgreSQL database of `--thread-store-url`, so the SMTP server and mail agents on several machines share it, as
their threads are shared. Same methods and semantics as `MailStore` (SQLite)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import psycopg
from threadline.activities.pg_store import Connections
from threadline.channels.mail.addresses import (
    Mailbox,
    MailboxExists,
    MailboxNotFound,
    new_mailbox,
)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS threadline_mailboxes (
        address TEXT PRIMARY KEY, room TEXT NOT NULL, queue TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS threadline_mail_inbound (
        job_key TEXT PRIMARY KEY, mailbox TEXT NOT NULL, message_id TEXT NOT NULL, sender TEXT NOT NULL,
        subject TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, eml_path TEXT, received_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS threadline_mail_threads (
        room TEXT NOT NULL, message_id TEXT NOT NULL, thread_id TEXT NOT NULL, direction TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (room, message_id)
    )""",
    """CREATE TABLE IF NOT EXISTS threadline_mail_sent (
        message_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, recipients TEXT NOT NULL,
        sent_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS threadline_mail_participants (
        room TEXT NOT NULL, thread_id TEXT NOT NULL, address TEXT NOT NULL, PRIMARY KEY (room, thread_id, address)
    )""",
    "CREATE INDEX IF NOT EXISTS threadline_mail_sent_thread ON threadline_mail_sent (thread_id)",
)


class PgMailStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._db = Connections(url, SCHEMA)

    def _execute(self, query: str, args: Iterable[Any] = ()) -> psycopg.Cursor[Any]:
        return self._db.get().execute(query, tuple(args))

    def create_mailbox(self, address: str, room: str, queue: str | None = None) -> Mailbox:
        box = new_mailbox(address, room, queue, time.time())
        inserted = self._execute(
            "INSERT INTO threadline_mailboxes (address, room, queue, created_at) VALUES (%s,%s,%s,%s)"
            " ON CONFLICT (address) DO NOTHING", (box.address, box.room, box.queue, box.created_at),
        ).rowcount
        if not inserted:
            existing = self.mailbox(box.address)
            where = f" (room {existing.room}, queue {existing.queue})" if existing else ""
            raise MailboxExists(f"mailbox {box.address} is already registered{where}")
        return box

    def mailbox(self, address: str) -> Mailbox | None:
        row = self._execute("SELECT address, room, queue, created_at FROM threadline_mailboxes WHERE address=%s",
                            (address.strip().lower(),)).fetchone()
        return Mailbox(*row) if row else None

    def mailboxes(self, room: str | None = None) -> list[Mailbox]:
        query, args = "SELECT address, room, queue, created_at FROM threadline_mailboxes", []
        if room:
            query, args = query + " WHERE room=%s", [room]
        return [Mailbox(*row) for row in self._execute(query + " ORDER BY address", args)]

    def delete_mailbox(self, address: str) -> None:
        if not self._execute("DELETE FROM threadline_mailboxes WHERE address=%s", (address.strip().lower(),)).rowcount:
            raise MailboxNotFound(f"there is no mailbox {address.strip()}")

    def inbound_status(self, job_key: str) -> str | None:
        row = self._execute("SELECT status FROM threadline_mail_inbound WHERE job_key=%s", (job_key,)).fetchone()
        return row[0] if row else None

    def record_inbound(
        self, job_key: str, mailbox: str, message_id: str, sender: str, subject: str, status: str,
        reason: str | None = None, eml_path: str | None = None,
    ) -> None:
        self._execute(
            "INSERT INTO threadline_mail_inbound (job_key, mailbox, message_id, sender, subject, status, reason,"
            " eml_path, received_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (job_key) DO UPDATE SET"
            " mailbox=EXCLUDED.mailbox, message_id=EXCLUDED.message_id, sender=EXCLUDED.sender,"
            " subject=EXCLUDED.subject, status=EXCLUDED.status, reason=EXCLUDED.reason,"
            " eml_path=EXCLUDED.eml_path, received_at=EXCLUDED.received_at",
            (job_key, mailbox, message_id, sender, subject, status, reason, eml_path, time.time()),
        )

    def inbound(self, mailbox: str | None = None) -> list[dict[str, Any]]:
        names = ("job_key", "mailbox", "message_id", "sender", "subject", "status", "reason", "eml_path", "received_at")
        query = f"SELECT {', '.join(names)} FROM threadline_mail_inbound"
        rows = self._execute(query + (" WHERE mailbox=%s" if mailbox else "") + " ORDER BY received_at",
                             [mailbox] if mailbox else [])
        return [dict(zip(names, row)) for row in rows]

    def remember(self, room: str, message_id: str, thread_id: str, direction: str) -> None:
        self._execute(
            "INSERT INTO threadline_mail_threads (room, message_id, thread_id, direction, created_at)"
            " VALUES (%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING", (room, message_id, thread_id, direction, time.time()),
        )

    def thread_of(self, room: str, ids: Iterable[str]) -> str | None:
        """The thread of the first id known (callers pass the most specific first)."""
        for message_id in ids:
            row = self._execute("SELECT thread_id FROM threadline_mail_threads WHERE room=%s AND message_id=%s",
                                (room, message_id)).fetchone()
            if row:
                return row[0]
        return None

    def add_participants(self, room: str, thread_id: str, addresses: Iterable[str]) -> None:
        rows = [(room, thread_id, a.strip().lower()) for a in addresses if a and a.strip()]
        if rows:
            with self._db.get().cursor() as cursor:
                cursor.executemany("INSERT INTO threadline_mail_participants (room, thread_id, address)"
                                   " VALUES (%s,%s,%s) ON CONFLICT DO NOTHING", rows)

    def is_participant(self, room: str, thread_id: str, address: str) -> bool:
        address = address.strip().lower()
        if self._execute("SELECT 1 FROM threadline_mail_participants WHERE room=%s AND thread_id=%s AND address=%s",
                         (room, thread_id, address)).fetchone():
            return True
        rows = self._execute("SELECT recipients FROM threadline_mail_sent WHERE thread_id=%s", (thread_id,)).fetchall()
        return any(address in (r.strip().lower() for r in row[0].split(",")) for row in rows)

    def was_sent(self, message_id: str) -> bool:
        return self._execute("SELECT 1 FROM threadline_mail_sent WHERE message_id=%s",
                             (message_id,)).fetchone() is not None

    def mark_sent(self, message_id: str, thread_id: str, recipients: list[str]) -> None:
        self._execute(
            "INSERT INTO threadline_mail_sent (message_id, thread_id, recipients, sent_at) VALUES (%s,%s,%s,%s)"
            " ON CONFLICT DO NOTHING", (message_id, thread_id, ", ".join(recipients), time.time()),
        )
        self.add_participants(thread_id.partition("/")[0], thread_id, recipients)
