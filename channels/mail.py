"""The mail channel: people email the agent, the agent answers in the same email thread, once.

Pieces:

- `MailStore`: one SQLite file, `THREADLINE_HOME/mail.sqlite3`, shared by the SMTP server and the consumers on a
  machine: the mailbox registry (address → room, queue), inbound mail received (queued or ignored, and why), the
  Message-ID → thread index (mail received and sent), and the record of replies sent.
- `MailServer`: the inbound SMTP server (aiosmtpd). RCPT for an address that is no registered mailbox → 550; a
  message over the size limit → 552; DATA is answered 250 only after the raw .eml is in room storage and a
  `MailJobWorkflow` is started on the mailbox's queue (job key derived from the Message-ID, so a duplicate
  delivery is one job); Temporal unreachable → 451 and the sender retries. Bounces and automatic mail are stored
  and recorded, never answered; a sender outside `--mail-allow` gets 550.
- `MailActivities` + `MailChannel`: `--channel mail:ADDRESS` consumes the mailbox's queue (a worker on the queue's
  task queue hosting the mail job workflow), turns each mail into a turn and sends the reply through
  `--smtp-relay`.

Exactly once: a reply's Message-ID is derived from its turn, and `send_mail_reply` checks the `sent` record before
the SMTP transaction and writes it right after the relay's 250. A worker killed before the relay accepted the
message sends it on retry (once); killed after the 250 but before the record was written (a window of one local
SQLite write), the retry sends a second copy with the same Message-ID, which most mail stores collapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import email.utils
import hashlib
import json
import logging
import mimetypes
import os
import re
import smtplib
import sqlite3
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from temporalio import activity, common
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker
from threadline.activities.heartbeat import heartbeating
from threadline.activities.storage import RoomStorage, StoragePathError, threadline_home
from threadline.activities.stores import open_thread_store
from threadline.activities.tools import Tool, ToolArgumentsError
from threadline.channels.base import ChannelAdapter, ChannelContext, temporal_worker
from threadline.channels.delivery import register_search_attributes
from threadline.channels.queue import QueueActivities
from threadline.contracts import PREPARE_MAIL_TURN, SEND_MAIL_REPLY
from threadline.models import (
    MAX_TURN_TEXT_BYTES,
    AgentSpec,
    ErrorType,
    JobStatus,
    MailEnvelope,
    MailJobInput,
    MailReplyRequest,
    MailSettings,
    MailTurnPlan,
    Turn,
    validate_name,
    validate_queue_name,
)
from threadline.workflows.jobs import (
    MEMO_KEY,
    job_memo,
    job_task_queue,
    job_turn_id,
    job_workflow_id,
    public_job_id,
)
from threadline.workflows.mail_job import MailJobWorkflow
from threadline.workflows.search_attributes import (
    CHANNEL_ATTRIBUTE,
    JOB_STATUS_ATTRIBUTE,
    QUEUE_ATTRIBUTE,
    ROOM_ATTRIBUTE,
)

log = logging.getLogger("threadline.mail")

ADDRESS_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
MESSAGE_ID_RE = re.compile(r"<[^<>\s]+>")
AUTO_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
SYSTEM_SENDERS = {"mailer-daemon", "postmaster"}
HANDOFF_TIMEOUT = 20.0
"""Seconds the SMTP server waits for Temporal to accept a mail before answering 451."""
MAX_REFERENCES = 20
FAILURE_NOTICE = (
    "Sorry, I could not complete an answer to your message this time. It has been recorded, and you are welcome "
    "to write again."
)


class MailboxError(ValueError):
    """An invalid address, room or queue (usage)."""


class MailboxExists(LookupError):
    pass


class MailboxNotFound(LookupError):
    pass


# Addresses and names.


def normalize_address(address: str) -> str:
    value = address.strip().lower()
    if not ADDRESS_RE.match(value) or len(value) > 254:
        raise MailboxError(f"{address.strip() or '(empty)'!r} is not a valid email address (like support@example.com)")
    return value


def default_queue(address: str) -> str:
    """A mailbox's queue when none is given: the address, spelt as a queue name (`@` → `_at_`)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", address.replace("@", "_at_"))
    if len(name) > 63:
        name = f"{name[:50]}-{hashlib.sha256(address.encode()).hexdigest()[:12]}"
    return name


def allowed(sender: str, allow: Iterable[str]) -> bool:
    """No list: everyone. Entries are addresses or `@domain` (that domain and its subdomains)."""
    rules = [a.strip().lower() for a in allow if a.strip()]
    if not rules:
        return True
    sender = sender.strip().lower()
    domain = sender.rpartition("@")[2]
    for rule in rules:
        if rule.startswith("@"):
            if domain == rule[1:] or domain.endswith("." + rule[1:]):
                return True
        elif sender == rule:
            return True
    return False


def message_ids(value: str | None) -> list[str]:
    return MESSAGE_ID_RE.findall(str(value or ""))


def mail_job_key(mailbox: str, message_id: str) -> str:
    return "mail-" + hashlib.sha256(f"{mailbox}\n{message_id}".encode()).hexdigest()[:32]


def reply_message_id(turn_id: str, mailbox: str) -> str:
    """Deterministic per turn: every attempt to send a turn's reply sends the same message."""
    return f"<threadline-{hashlib.sha256(turn_id.encode()).hexdigest()[:32]}@{mailbox.rpartition('@')[2]}>"


def reply_subject(subject: str) -> str:
    base = re.sub(r"^\s*(?:(?:re|aw|sv|antw)(?:\[\d+\])?\s*:\s*)+", "", subject or "", flags=re.IGNORECASE).strip()
    return f"Re: {base or 'your message'}"


def thread_slug(subject: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", reply_subject(subject)[4:].lower()).strip("-")
    return words[:40].strip("-") or "mail"


# The store.

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


@dataclass(frozen=True)
class Mailbox:
    address: str
    room: str
    queue: str
    created_at: float


class MailStore:
    """SQLite in WAL mode: the SMTP server and the agents of one machine share it. Agents on several machines
    need one shared THREADLINE_HOME (and one room storage for the .eml files: the same --storage-url)."""

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
        address = normalize_address(address)
        try:
            validate_name("room", room)
            queue = validate_queue_name(queue) if queue else default_queue(address)
        except ValueError as e:
            raise MailboxError(str(e)) from e
        try:
            self._db().execute(
                "INSERT INTO mailboxes (address, room, queue, created_at) VALUES (?,?,?,?)",
                (address, room, queue, time.time()),
            )
        except sqlite3.IntegrityError:
            existing = self.mailbox(address)
            where = f" (room {existing.room}, queue {existing.queue})" if existing else ""
            raise MailboxExists(f"mailbox {address} is already registered{where}") from None
        return Mailbox(address, room, queue, time.time())

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


# Parsing.


class _TextFromHtml(HTMLParser):
    BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
            if tag == "li":
                self.parts.append("- ")
        elif tag == "a":
            self.href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "a" and self.href:
            if self.href.startswith(("http://", "https://", "mailto:")):
                self.parts.append(f" ({self.href})")
            self.href = None

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    parser = _TextFromHtml()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def markdown_to_html(text: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return f'<!DOCTYPE html><html><body style="font-family: sans-serif">{body}</body></html>'


@dataclass
class ParsedMail:
    message: EmailMessage
    message_id: str
    subject: str
    from_name: str
    from_address: str
    reply_to: list[str]
    to: list[str]
    cc: list[str]
    date: str
    in_reply_to: list[str]
    references: list[str]
    body: str

    @property
    def sender(self) -> str:
        return self.from_name or self.from_address or "unknown sender"

    def automatic(self, envelope_sender: str | None = None) -> str | None:
        """Why this mail must not be answered (a bounce or automatic mail), or None."""
        msg = self.message
        if msg.get_content_type() == "multipart/report":
            return "a delivery report (multipart/report)"
        auto = str(msg.get("Auto-Submitted", "") or "").strip().lower()
        if auto and auto.split(";")[0].strip() != "no":
            return f"automatic mail (Auto-Submitted: {auto})"
        precedence = str(msg.get("Precedence", "") or "").strip().lower()
        if precedence in AUTO_PRECEDENCE:
            return f"automatic mail (Precedence: {precedence})"
        return_path = msg.get("Return-Path")
        if return_path is not None and str(return_path).strip() in ("", "<>"):
            return "a bounce (empty Return-Path)"
        if envelope_sender is not None and envelope_sender.strip() in ("", "<>"):
            return "a bounce (empty envelope sender)"
        for address in (self.from_address, (envelope_sender or "").lower()):
            if address and address.partition("@")[0] in SYSTEM_SENDERS:
                return f"a bounce or system message (from {address})"
        return None


def _addresses(msg: EmailMessage, name: str) -> list[tuple[str, str]]:
    values = [str(v) for v in msg.get_all(name, [])]
    return [(n, a.lower()) for n, a in email.utils.getaddresses(values) if a and "@" in a]


_AUTH_RESULT = re.compile(r"\b(spf|dkim|dmarc)\s*=\s*([a-z]+)", re.IGNORECASE)


def authentication_verdict(msg: EmailMessage, authserv_id: str) -> tuple[bool, str]:
    """Whether the receiving server `authserv_id` found the mail authentic, from its own Authentication-Results
    headers (RFC 8601; headers naming any other server are ignored, a sender can write those): dmarc=pass, or when
    it gave no DMARC result, dkim=pass or spf=pass. Returns (authentic, what it said)."""
    results: dict[str, str] = {}
    for header in msg.get_all("Authentication-Results") or []:
        server, _, rest = str(header).partition(";")
        words = server.split()
        if not words or words[0].lower() != authserv_id:
            continue
        for method, result in _AUTH_RESULT.findall(rest):
            results.setdefault(method.lower(), result.lower())
    said = ", ".join(f"{m}={r}" for m, r in sorted(results.items())) or f"no Authentication-Results from {authserv_id}"
    if "dmarc" in results:
        return results["dmarc"] == "pass", said
    return results.get("dkim") == "pass" or results.get("spf") == "pass", said


def parse_mail(raw: bytes) -> ParsedMail:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    ids = message_ids(msg.get("Message-ID"))
    message_id = ids[0] if ids else f"<generated-{hashlib.sha256(raw).hexdigest()[:32]}@threadline.invalid>"
    senders = _addresses(msg, "From")
    from_name, from_address = senders[0] if senders else ("", "")
    body = ""
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is not None:
        try:
            content = part.get_content()
        except (LookupError, UnicodeError, ValueError, AssertionError) as e:
            # An unknown or wrong charset: the text as UTF-8 with replacement characters, and a note that says so.
            raw_body = part.get_payload(decode=True) or b""
            content = raw_body.decode("utf-8", errors="replace") if isinstance(raw_body, bytes) else str(raw_body)
            content += (f"\n\n[the mail's text could not be decoded as {part.get_content_charset() or 'declared'} "
                        f"({e.__class__.__name__}: {e}); shown as UTF-8, characters that did not decode are marked]")
            log.warning("mail %s: body not decodable: %s", message_id, e)
        body = html_to_text(content) if part.get_content_type() == "text/html" else content
    return ParsedMail(
        message=msg,
        message_id=message_id,
        subject=" ".join(str(msg.get("Subject", "") or "").split()),
        from_name=from_name.strip(),
        from_address=from_address,
        reply_to=[a for _, a in _addresses(msg, "Reply-To")],
        to=[a for _, a in _addresses(msg, "To")],
        cc=[a for _, a in _addresses(msg, "Cc")],
        date=str(msg.get("Date", "") or ""),
        in_reply_to=message_ids(msg.get("In-Reply-To")),
        references=message_ids(msg.get("References")),
        body=body.strip(),
    )


def attachments_of(msg: EmailMessage) -> list[tuple[str, bytes]]:
    """(file name, content) of every attachment; the text body and its HTML alternative are not attachments."""
    body = msg.get_body(preferencelist=("plain", "html"))
    alternative = msg.get_body(preferencelist=("html",)) if body is not None else None
    found: list[tuple[str, bytes]] = []
    for n, part in enumerate(msg.walk()):
        if part.is_multipart() or part is body or part is alternative:
            continue
        name = part.get_filename()
        if part.get_content_disposition() != "attachment" and not name:
            continue
        data = part.get_payload(decode=True) or b""
        found.append((_safe_file_name(name or f"attachment-{n}"), data))
    return found


def _safe_file_name(name: str) -> str:
    base = name.replace("\\", "/").rpartition("/")[2]
    base = re.sub(r"[^\w.+-]+", "_", base).strip("._") or "attachment"
    return base[:120]


# Inbound SMTP.


class MailServer:
    """The inbound SMTP server. It hands each accepted mail to Temporal before answering 250."""

    def __init__(
        self,
        store: MailStore,
        client: Callable[[], Awaitable[Client]],
        *,
        host: str = "127.0.0.1",
        port: int = 2525,
        max_size: int = 25 * 1024 * 1024,
        allow: Iterable[str] = (),
        handoff_timeout: float = HANDOFF_TIMEOUT,
        storage_url: str | None = None,
    ) -> None:
        """`storage_url`: the room storage the raw .eml files go to (`--storage-url`; None: this machine's
        THREADLINE_HOME); the agents that consume the mailboxes must use the same one."""
        self.store = store
        self.storage_url = storage_url
        self.client = client
        self.host, self.requested_port = host, port
        self.max_size = max_size
        self.allow = list(allow)
        self.handoff_timeout = handoff_timeout
        self._server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: SMTP(self, data_size_limit=self.max_size, enable_SMTPUTF8=True, hostname="threadline",
                             ident="Threadline mail", loop=loop),
                host=self.host, port=self.requested_port,
            )
        except OSError as e:
            raise MailServerError(
                f"the mail channel cannot listen on {self.host}:{self.requested_port}: {e.strerror or e} (choose "
                "another --smtp-port, or --smtp-port 0 when another process receives the mail)"
            ) from e

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def serve(self, stop: asyncio.Event) -> None:
        await self.start()
        log.info("mail: SMTP server on %s:%s", self.host, self.port)
        try:
            await stop.wait()
        finally:
            await self.close()

    # aiosmtpd hooks.

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        mailbox = await asyncio.to_thread(self.store.mailbox, address)
        if mailbox is None:
            return f"550 5.1.1 <{address}>: no such mailbox here"
        envelope.rcpt_tos.append(mailbox.address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        try:
            mail = parse_mail(raw)
        except Exception as e:  # noqa: BLE001 - anything unparseable is refused, never lost silently
            return f"554 5.6.0 the message cannot be parsed: {e}"
        automatic = mail.automatic(envelope.mail_from)
        if automatic is None and not allowed(mail.from_address, self.allow):
            log.info("mail: refused mail from %s (not in --mail-allow)", mail.from_address)
            return f"550 5.7.1 <{mail.from_address}> may not write to this mailbox"
        try:
            for address in dict.fromkeys(envelope.rcpt_tos):
                await self._accept(address, raw, mail, automatic)
        except _Unavailable as e:
            log.warning("mail: %s", e)
            return "451 4.3.0 cannot hand the message over right now, try again later"
        return "250 2.0.0 OK: accepted"

    async def _accept(self, address: str, raw: bytes, mail: ParsedMail, automatic: str | None) -> None:
        mailbox = await asyncio.to_thread(self.store.mailbox, address)
        if mailbox is None:  # deleted since RCPT
            return
        key = mail_job_key(mailbox.address, mail.message_id)
        if await asyncio.to_thread(self.store.inbound_status, key) is not None:
            return  # the same mail again: already handed over (or recorded)
        eml_path = f".mail/{mailbox.queue}/{key}.eml"
        storage = RoomStorage.for_url(self.storage_url, mailbox.room)
        await asyncio.to_thread(storage.write, eml_path, raw)
        if automatic is not None:
            log.info("mail: %s to %s recorded, not answered: %s", mail.message_id, address, automatic)
            await asyncio.to_thread(self.store.record_inbound, key, mailbox.address, mail.message_id,
                                    mail.from_address, mail.subject, "ignored", automatic, eml_path)
            return
        job = MailJobInput(
            room=mailbox.room, queue=mailbox.queue, mailbox=mailbox.address, job_key=key, message_id=mail.message_id,
            eml_path=eml_path, subject=mail.subject, sender=mail.from_address, accepted_at=datetime.now(timezone.utc),
        )
        try:
            await asyncio.wait_for(self._start_job(job), self.handoff_timeout)
        except Exception as e:  # noqa: BLE001 - unreachable, refused, timed out: the sender retries later
            raise _Unavailable(f"Temporal did not take mail {mail.message_id}: {e.__class__.__name__}: {e}") from e
        await asyncio.to_thread(self.store.record_inbound, key, mailbox.address, mail.message_id,
                                mail.from_address, mail.subject, "queued", None, eml_path)

    async def _start_job(self, job: MailJobInput) -> None:
        client = await self.client()
        status = JobStatus(job_id=public_job_id(job.queue, job.job_key), room=job.room, queue=job.queue,
                           status="queued", accepted_at=job.accepted_at)
        for attempt in range(2):
            try:
                await client.start_workflow(
                    MailJobWorkflow.run,
                    job,
                    id=job_workflow_id(job.room, job.queue, job.job_key),
                    task_queue=job_task_queue(job.room, job.queue),
                    id_reuse_policy=common.WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=common.WorkflowIDConflictPolicy.FAIL,
                    search_attributes=common.TypedSearchAttributes([
                        common.SearchAttributePair(ROOM_ATTRIBUTE, job.room),
                        common.SearchAttributePair(QUEUE_ATTRIBUTE, job.queue),
                        common.SearchAttributePair(CHANNEL_ATTRIBUTE, "mail"),
                        common.SearchAttributePair(JOB_STATUS_ATTRIBUTE, "queued"),
                    ]),
                    memo={MEMO_KEY: job_memo(status)},
                    static_summary=f"mail from {job.sender}: {job.subject}"[:200],
                )
                return
            except WorkflowAlreadyStartedError:
                return
            except RPCError as e:
                if attempt or e.status != RPCStatusCode.INVALID_ARGUMENT or "search attribute" not in str(e).lower():
                    raise
                await register_search_attributes(client)


class _Unavailable(Exception):
    pass


class MailServerError(RuntimeError):
    """The SMTP server cannot start."""


def lazy_client(connect: Callable[[], Awaitable[Client]]) -> Callable[[], Awaitable[Client]]:
    """A client connected on first use; a failed connection is tried again at the next mail."""
    holder: dict[str, Client] = {}

    async def get() -> Client:
        if "client" not in holder:
            holder["client"] = await connect()
        return holder["client"]

    return get


# Replies.


def build_reply(
    envelope: MailEnvelope, message_id: str, text: str, *, sender_name: str | None = None
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr((sender_name, envelope.mailbox)) if sender_name else envelope.mailbox
    msg["To"] = ", ".join(envelope.to)
    if envelope.cc:
        msg["Cc"] = ", ".join(envelope.cc)
    msg["Subject"] = reply_subject(envelope.subject)
    msg["Date"] = email.utils.format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = message_id
    msg["In-Reply-To"] = envelope.message_id
    msg["References"] = " ".join(envelope.references)
    # RFC 3834: an automatic answer. Another agent (or an out-of-office) never answers it, so agents cannot loop.
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(text or "(no text)")
    msg.add_alternative(markdown_to_html(text or "(no text)"), subtype="html")
    return msg


def reply_references(mail: ParsedMail) -> list[str]:
    refs = list(dict.fromkeys([*mail.references, *mail.in_reply_to[:1], mail.message_id]))
    refs = [r for r in refs if r != mail.message_id] + [mail.message_id]
    return refs if len(refs) <= MAX_REFERENCES else [refs[0], *refs[-(MAX_REFERENCES - 1):]]


def relay_send(relay: str, msg: EmailMessage, sender: str, recipients: list[str], env: dict[str, str]) -> None:
    """One SMTP transaction with the relay. THREADLINE_SMTP_USERNAME / THREADLINE_SMTP_PASSWORD log in;
    THREADLINE_SMTP_TLS is `starttls` (required), `ssl` (implicit TLS, port 465), `none`, or `auto` (the default:
    STARTTLS when the relay offers it)."""
    host, _, port_text = relay.rpartition(":")
    if not host or not port_text.isdigit():
        raise ApplicationError(f"--smtp-relay {relay!r} is not host:port", type=ErrorType.MAIL_CONFIG_ERROR, non_retryable=True)
    port = int(port_text)
    mode = env.get("THREADLINE_SMTP_TLS", "auto").strip().lower()
    context = ssl.create_default_context()
    if env.get("THREADLINE_SMTP_INSECURE", "").lower() in ("1", "true", "yes"):
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    smtp: smtplib.SMTP = (
        smtplib.SMTP_SSL(host, port, timeout=60, context=context) if mode == "ssl" else smtplib.SMTP(host, port, timeout=60)
    )
    try:
        smtp.ehlo()
        if mode == "starttls" or (mode == "auto" and smtp.has_extn("starttls")):
            smtp.starttls(context=context)
            smtp.ehlo()
        user = env.get("THREADLINE_SMTP_USERNAME")
        if user:
            smtp.login(user, env.get("THREADLINE_SMTP_PASSWORD", ""))
        smtp.send_message(msg, from_addr=sender, to_addrs=recipients)
    finally:
        with contextlib.suppress(Exception):
            smtp.quit()


async def send_recorded(
    store: MailStore, relay: str, msg: EmailMessage, sender: str, recipients: list[str], thread_id: str,
    env: dict[str, str],
) -> None:
    """Sends `msg` through the relay (heartbeating) and records it as sent, keyed by its Message-ID. Callers check
    `store.was_sent` first. Refusals are non-retryable `MailRejected`, an unreachable relay `MailUnavailable`."""
    try:
        async with heartbeating(at_start=True):
            await asyncio.to_thread(relay_send, relay, msg, sender, recipients, env)
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as e:
        raise ApplicationError(f"the relay refused the mail: {e}", type=ErrorType.MAIL_REJECTED, non_retryable=True) from e
    except smtplib.SMTPResponseException as e:
        permanent = 500 <= e.smtp_code < 600
        raise ApplicationError(f"the relay answered {e.smtp_code}: {e.smtp_error!r}",
                               type=ErrorType.MAIL_REJECTED if permanent else ErrorType.MAIL_UNAVAILABLE,
                               non_retryable=permanent) from e
    except (OSError, smtplib.SMTPException) as e:
        raise ApplicationError(f"cannot reach the relay {relay}: {e}", type=ErrorType.MAIL_UNAVAILABLE) from e
    store.mark_sent(str(msg["Message-ID"]), thread_id, recipients)


class MailActivities:
    """The consumer side of a mailbox: the agent, its settings and `?reply-all`."""

    def __init__(self, spec: AgentSpec, address: str, reply_all: bool, store: MailStore) -> None:
        self.spec = spec
        self.address = address
        self.reply_all = reply_all
        self.store = store
        self.storage = RoomStorage.for_spec(spec)
        self.env = dict(os.environ)

    @PREPARE_MAIL_TURN.defn
    async def prepare_mail_turn(self, job: MailJobInput) -> MailTurnPlan:
        try:
            raw = await asyncio.to_thread(self.storage.read_bytes, job.eml_path)
        except OSError as e:
            raise ApplicationError(
                f"cannot read {job.eml_path} from room storage {self.storage.url}: {e} (the SMTP server and the "
                "agent must use the same --storage-url, or share THREADLINE_HOME)",
                type=ErrorType.MAIL_UNREADABLE, non_retryable=activity.info().attempt >= 5,
            ) from e
        mail = parse_mail(raw)
        thread_id, new_thread = await asyncio.to_thread(self._thread_for, job, mail)
        if not allowed(mail.from_address, self.spec.mail.allow):
            return MailTurnPlan(thread_id=thread_id, subject=mail.subject,
                                skipped=f"{mail.from_address} is not in --mail-allow")
        if self.spec.mail.require_auth:
            authentic, said = authentication_verdict(mail.message, self.spec.mail.require_auth)
            if not authentic:
                return MailTurnPlan(thread_id=thread_id, subject=mail.subject,
                                    skipped=f"not authenticated by {self.spec.mail.require_auth} ({said}): "
                                            "--mail-require-auth")
        if reason := mail.automatic():
            return MailTurnPlan(thread_id=thread_id, subject=mail.subject, skipped=reason)

        folder = f"{thread_id.partition('/')[2]}/mail/{job.job_key}"
        attachments = []
        for name, data in attachments_of(mail.message):
            path = f"{folder}/{name}"
            while path in attachments:
                path = f"{folder}/{len(attachments)}-{name}"
            await asyncio.to_thread(self.storage.write, path, data)
            attachments.append(path)
        text = await asyncio.to_thread(self._turn_text, mail, folder, attachments)
        recipients = mail.reply_to or ([mail.from_address] if mail.from_address else [])
        cc: list[str] = []
        if self.reply_all:
            skip = {self.address, mail.from_address, *recipients}
            cc = [a for a in dict.fromkeys([*mail.to, *mail.cc]) if a not in skip]
        envelope = MailEnvelope(
            mailbox=job.mailbox, message_id=mail.message_id, subject=mail.subject, to=recipients, cc=cc,
            references=reply_references(mail),
        )
        workflow_id = job_workflow_id(job.room, job.queue, job.job_key)
        turn = Turn(
            turn_id=job_turn_id(workflow_id), channel=f"mail:{job.mailbox}", sender=mail.sender, text=text,
            attachments=attachments,
            metadata={"queue": job.queue, "job_id": public_job_id(job.queue, job.job_key),
                      "mail": {"message_id": mail.message_id, "from": mail.from_address, "subject": mail.subject,
                               "eml": job.eml_path}},
        )
        return MailTurnPlan(thread_id=thread_id, new_thread=new_thread, subject=mail.subject, turn=turn,
                            envelope=envelope)

    def _thread_for(self, job: MailJobInput, mail: ParsedMail) -> tuple[str, bool]:
        """The mail's thread (and whether it is new), recorded with its Message-ID and participants. Blocking
        (the mail registry), so it runs in a thread."""
        known = self.store.thread_of(job.room, [mail.message_id])
        parent = self.store.thread_of(job.room, [*mail.in_reply_to, *reversed(mail.references)])
        if parent is not None and not self.store.is_participant(job.room, parent, mail.from_address):
            # Message-IDs travel in every forwarded or quoted mail: knowing one does not let a stranger into the
            # thread (and its context); their mail starts a thread of its own.
            log.info("mail from %s names thread %s it takes no part in: a new thread", mail.from_address, parent)
            parent = None
        thread_id = known or parent
        new_thread = thread_id is None
        if thread_id is None:
            thread_id = self.spec.ref.thread_id(f"mail-{thread_slug(mail.subject)}-{job.job_key[5:13]}")
        self.store.remember(job.room, mail.message_id, thread_id, "in")
        self.store.add_participants(job.room, thread_id, [mail.from_address, *mail.to, *mail.cc])
        return thread_id, new_thread

    def _turn_text(self, mail: ParsedMail, folder: str, attachments: list[str]) -> str:
        sender = email.utils.formataddr((mail.from_name, mail.from_address)) if mail.from_name else mail.from_address
        header = [f"From: {sender}", f"To: {', '.join(mail.to)}"]
        if mail.cc:
            header.append(f"Cc: {', '.join(mail.cc)}")
        header.append(f"Subject: {mail.subject}")
        if mail.date:
            header.append(f"Date: {mail.date}")
        body = mail.body or "(no text)"
        head = "An email to " + self.address + ":\n" + "\n".join(header) + "\n\n"
        limit = MAX_TURN_TEXT_BYTES - len(head.encode()) - 512
        if len(body.encode()) > limit:
            path = f"{folder}/body.txt"
            self.storage.write(path, body)
            attachments.append(path)
            body = body.encode()[:limit].decode(errors="ignore") + f"\n[the message continues: all of it is in {path}]"
        return head + body

    @SEND_MAIL_REPLY.defn
    async def send_mail_reply(self, request: MailReplyRequest) -> str:
        if request.thread_title:
            try:
                open_thread_store(request.room, self.spec.thread_store_url).rename(
                    request.thread_id, request.thread_title or "(no subject)"
                )
            except Exception as e:  # noqa: BLE001 - a name is cosmetic: the reply still goes out
                activity.logger.warning("could not name thread %s after the mail's subject: %s", request.thread_id, e)
        text = request.text
        if request.status != "completed":
            if not self.spec.mail.failure_notice:
                return "no reply: the turn failed and failure notices are off"
            text = FAILURE_NOTICE
        message_id = reply_message_id(request.turn_id, request.envelope.mailbox)
        if self.store.was_sent(message_id):
            return message_id
        relay = self.spec.mail.smtp_relay
        if not relay:
            raise ApplicationError(
                "no --smtp-relay is configured: the reply cannot be sent", type=ErrorType.MAIL_CONFIG_ERROR, non_retryable=True
            )
        # Known before it is sent, so an answer to it that comes back fast finds its thread.
        self.store.remember(request.room, message_id, request.thread_id, "out")
        msg = build_reply(request.envelope, message_id, text)
        recipients = list(dict.fromkeys([*request.envelope.to, *request.envelope.cc]))
        if not recipients:
            raise ApplicationError("the mail has no sender to answer", type=ErrorType.MAIL_REJECTED, non_retryable=True)
        await send_recorded(self.store, relay, msg, request.envelope.mailbox, recipients, request.thread_id, self.env)
        return message_id


# The `send_email` tool: agents with a `mail:` channel start new outbound mail, linked to the current thread.


def mail_channel_addresses(spec: AgentSpec) -> list[str]:
    """The mailboxes of the agent's `mail:ADDRESS[?...]` channels, in order."""
    found: list[str] = []
    for channel in spec.channels:
        kind, _, value = channel.partition(":")
        if kind == "mail" and value:
            with contextlib.suppress(MailboxError):
                found.append(normalize_address(value.partition("?")[0]))
    return list(dict.fromkeys(found))


def build_outbound(
    sender: str, to: list[str], subject: str, text: str, message_id: str, attachments: list[tuple[str, bytes]]
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = message_id
    msg.set_content(text or "(no text)")
    msg.add_alternative(markdown_to_html(text or "(no text)"), subtype="html")
    for name, data in attachments:
        maintype, _, subtype = (mimetypes.guess_type(name)[0] or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg


@dataclass(frozen=True)
class SendEmailTool(Tool):
    """`from` is a Python keyword: the function takes `from_`, the model sees `from`."""

    @property
    def parameters(self) -> dict[str, Any]:
        schema = super().parameters
        properties = schema.get("properties", {})
        if "from_" in properties:
            properties["from"] = properties.pop("from_")
        return schema

    async def call(self, arguments: str) -> str:
        with contextlib.suppress(json.JSONDecodeError):
            raw = json.loads(arguments or "{}")
            if isinstance(raw, dict) and "from" in raw:
                raw["from_"] = raw.pop("from")
                arguments = json.dumps(raw)
        return await super().call(arguments)


def send_email_tools(spec: AgentSpec, storage: RoomStorage, env: dict[str, str] | None = None) -> list[Tool]:
    """`send_email` for an agent with a `mail:` channel; runs in its `run_tool` activity. The Message-ID is derived
    from the tool call (workflow id, run id, activity id), so a retried activity finds the `sent` record and never
    sends twice; it is indexed to the current thread, so an answer continues that thread."""
    addresses = mail_channel_addresses(spec)
    if not addresses:
        return []
    environment = dict(os.environ if env is None else env)

    async def send_email(
        to: list[str], subject: str, body: str, attachments: list[str] | None = None, from_: str | None = None
    ) -> str:
        try:
            sender = normalize_address(from_) if from_ else addresses[0]
        except MailboxError as e:
            raise ToolArgumentsError(f"from: {e}") from None
        if sender not in addresses:
            raise ToolArgumentsError(f"from: {sender} is not one of this agent's mailboxes ({', '.join(addresses)})")
        recipients: list[str] = []
        for value in to:
            try:
                recipients.append(normalize_address(email.utils.parseaddr(value)[1] or value))
            except MailboxError as e:
                raise ToolArgumentsError(f"to: {e}") from None
        recipients = list(dict.fromkeys(recipients))
        if not recipients:
            raise ToolArgumentsError("to: give at least one address")
        subject = " ".join(subject.split())
        files: list[tuple[str, bytes]] = []
        for path in attachments or []:
            try:
                data = await asyncio.to_thread(storage.read_bytes, path)
            except (StoragePathError, FileNotFoundError) as e:
                raise ToolArgumentsError(f"attachment {path!r}: {e}") from None
            files.append((_safe_file_name(path), data))
        if sum(len(data) for _, data in files) > spec.mail.max_size:
            raise ToolArgumentsError(f"attachments: more than {spec.mail.max_size} bytes in all")
        relay = spec.mail.smtp_relay
        if not relay:
            return "error: no --smtp-relay is configured: the email cannot be sent"
        info = activity.info()
        message_id = reply_message_id(
            f"send_email|{info.workflow_id}|{info.workflow_run_id}|{info.activity_id}", sender
        )
        store = MailStore.default()
        if not store.was_sent(message_id):
            # Known before it is sent, so an answer that comes back fast finds this thread.
            store.remember(spec.room, message_id, info.workflow_id, "out")
            msg = build_outbound(sender, recipients, subject, body, message_id, files)
            try:
                await send_recorded(store, relay, msg, sender, recipients, info.workflow_id, environment)
            except ApplicationError as e:
                if not e.non_retryable:
                    raise
                return f"error: the email was not sent: {e}"
        return (f"sent from {sender} to {', '.join(recipients)} (Message-ID {message_id}); an answer to it continues "
                "this thread")

    return [SendEmailTool(
        name="send_email",
        description=(f"Send a new email (a new mail thread) from {' or '.join(addresses)}: to (addresses), subject, "
                     "body (Markdown), attachments (room storage paths)"
                     + (", from (one of the mailboxes; default the first)" if len(addresses) > 1 else "")
                     + ". An answer to it comes back to this thread."),
        fn=send_email,
        timeout_seconds=150.0,
        max_attempts=3,
    )]


class MailChannel(ChannelAdapter):
    """`--channel mail:ADDRESS[?reply-all=true]`: consumes the mailbox's queue and, unless `--smtp-port 0`, runs the
    inbound SMTP server in the agent process."""

    def __init__(self, value: str) -> None:
        address, _, query = value.partition("?")
        self.address = normalize_address(address)
        self.reply_all = "reply-all=true" in query.lower()
        self.name = f"mail:{self.address}"

    def _mailbox(self, spec: AgentSpec, store: MailStore) -> Any:
        mailbox = store.mailbox(self.address)
        if mailbox is None:
            raise MailboxNotFound(
                f"channel mail:{self.address}: there is no such mailbox; create it with: threadline mailbox create "
                f"--address {self.address} --room {spec.room}"
            )
        if mailbox.room != spec.room:
            raise MailboxError(f"channel mail:{self.address}: the mailbox belongs to room {mailbox.room}, "
                               f"not {spec.room}")
        return mailbox

    def workers(self, context: ChannelContext) -> list[Worker]:
        store = MailStore.default()
        mailbox = self._mailbox(context.spec, store)
        if not context.spec.mail.smtp_relay:
            log.warning("mail:%s has no --smtp-relay: replies cannot be sent", self.address)
        mail = MailActivities(context.spec, self.address, self.reply_all, store)
        queue = QueueActivities(context.client, context.spec)
        return [
            temporal_worker(context.client, job_task_queue(context.spec.room, mailbox.queue), [MailJobWorkflow],
                            [mail.prepare_mail_turn, queue.run_queue_turn, mail.send_mail_reply]),
        ]

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        settings: MailSettings = context.spec.mail
        where = (settings.smtp_host, settings.smtp_port)
        if not settings.smtp_port or where in _SERVING:
            # One inbound server per process serves every registered mailbox.
            await stop.wait()
            return
        _SERVING.add(where)

        async def client() -> Client:
            return context.client

        server = MailServer(MailStore.default(), client, host=settings.smtp_host, port=settings.smtp_port,
                            max_size=settings.max_size, allow=settings.allow, storage_url=context.spec.storage_url)
        try:
            await server.serve(stop)
        finally:
            _SERVING.discard(where)


_SERVING: set[tuple[str, int]] = set()
