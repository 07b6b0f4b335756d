"""Mail addresses, Message-IDs and the names derived from them: mailbox queues, job keys, reply ids."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from threadline.models.limits import validate_name, validate_queue_name

ADDRESS_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
MESSAGE_ID_RE = re.compile(r"<[^<>\s]+>")
AUTO_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
SYSTEM_SENDERS = {"mailer-daemon", "postmaster"}
MAX_REFERENCES = 20

@dataclass(frozen=True)
class Mailbox:
    """A registered address: its mail becomes jobs on `queue` in `room`."""

    address: str
    room: str
    queue: str
    created_at: float


class MailboxError(ValueError):
    """An invalid address, room or queue (usage)."""


class MailboxExists(LookupError):
    pass


class MailboxNotFound(LookupError):
    pass




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


def new_mailbox(address: str, room: str, queue: str | None, created_at: float) -> Mailbox:
    """A mailbox to register, checked: a usable address, room and queue (default: the address, @ spelt _at_)."""
    address = normalize_address(address)
    try:
        validate_name("room", room)
        queue = validate_queue_name(queue) if queue else default_queue(address)
    except ValueError as e:
        raise MailboxError(str(e)) from e
    return Mailbox(address, room, queue, created_at)
