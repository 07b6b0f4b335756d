"""Mail for tests: a local relay that captures what the agent sends, mails to send over SMTP, an in-process agent
with its SMTP server (the `sink` and `mailbox` fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import smtplib
import threading
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid

from aiosmtpd.controller import Controller
from threadline.channels.delivery import connect
from threadline.channels.mail.addresses import mail_job_key
from threadline.channels.mail.channel import MailChannel
from threadline.channels.mail.registry import MailStore
from threadline.channels.queue_jobs import wait_for_job
from threadline.models.jobs import JobStatus
from threadline.models.spec import AgentSpec, MailSettings
from threadline.worker import run_agent
from threadline.workflows.jobs import public_job_id

from tests.runtime_support import eventually
from tests.temporal_server import free_port

ADDRESS = "agent@example.com"
ALICE = "Alice Example <alice@example.com>"


class Sink:
    """The relay: captures every message; `hold_next()` makes the next RCPT wait until `release()`."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    @property
    def relay(self) -> str:
        return f"127.0.0.1:{self.controller.port}"

    def hold_next(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001, ANN201
        if not self.gate.is_set():
            self.held.set()
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        self.messages.append(email.message_from_bytes(envelope.original_content, policy=email.policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def new_mail(body: str, subject: str = "Order 42", *, sender: str = ALICE, to: str = ADDRESS,
             message_id: str | None = None, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = message_id or make_msgid(domain="example.com")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def deliver(port: int, msg: EmailMessage, *, mail_from: str | None = None, to: list[str] | None = None) -> int:
    """Sends over SMTP; returns 250 or the code the server refused with."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.send_message(msg, from_addr=mail_from, to_addrs=to)
        return 250
    except smtplib.SMTPRecipientsRefused as e:
        return next(iter(e.recipients.values()))[0]
    except smtplib.SMTPResponseException as e:
        return e.smtp_code


async def send(port: int, msg: EmailMessage, **kw) -> int:  # noqa: ANN003
    return await asyncio.to_thread(deliver, port, msg, **kw)


def job_id(spec: AgentSpec, message_id: str, address: str = ADDRESS) -> str:
    mailbox = MailStore.default().mailbox(address)
    assert mailbox is not None
    return public_job_id(mailbox.queue, mail_job_key(address, message_id))


async def job_done(client, spec: AgentSpec, message_id: str) -> JobStatus:  # noqa: ANN001
    job = job_id(spec, message_id)
    await eventually(lambda: client.get_workflow_handle(f"{spec.room}/.queues/{job}").describe(), 30)
    return await asyncio.wait_for(wait_for_job(client, spec.room, job), 60)


def can_connect(port: int) -> bool:
    with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        return smtp.noop()[0] == 250
    return False


@contextlib.asynccontextmanager
async def mail_agent(temporal_server, spec: AgentSpec, channel: str = ADDRESS) -> AsyncIterator[int]:  # noqa: ANN001
    """An in-process agent with `--channel mail:...`, its SMTP server on a free port; yields the port."""
    client = await connect(temporal_server.address)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_agent(client, spec, stop, ready, channels=[MailChannel(channel)]))
    await asyncio.wait_for(ready.wait(), 30)
    await eventually(lambda: asyncio.to_thread(can_connect, spec.mail.smtp_port), 10, what="SMTP server up")
    try:
        yield spec.mail.smtp_port
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def mail_spec(spec: AgentSpec, sink: Sink, **settings) -> AgentSpec:  # noqa: ANN003
    mail = MailSettings(smtp_port=free_port(), smtp_relay=sink.relay, **settings)
    return spec.model_copy(update={"mail": mail})
