"""`MailServer`: the inbound SMTP server (aiosmtpd). A mail is answered 250 only once its .eml is in room storage
and its `MailJobWorkflow` is started; Temporal unreachable → 451 and the sender retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from opentelemetry import trace
from temporalio.client import Client
from threadline import telemetry
from threadline.activities.storage import RoomStorage
from threadline.channels.delivery import start_job
from threadline.channels.mail.addresses import allowed, mail_job_key
from threadline.channels.mail.parsing import ParsedMail, parse_mail
from threadline.channels.mail.registry import MailRegistry
from threadline.models.jobs import JobStatus, MailJobInput
from threadline.workflows.jobs import (
    MEMO_KEY,
    job_memo,
    job_task_queue,
    job_workflow_id,
    public_job_id,
)
from threadline.workflows.mail_job import MailJobWorkflow
from threadline.workflows.search_attributes import (
    start_attributes,
)

log = logging.getLogger("threadline.mail")
HANDOFF_TIMEOUT = 20.0
"""Seconds the SMTP server waits for Temporal to accept a mail before answering 451."""


class MailServer:
    """The inbound SMTP server. It hands each accepted mail to Temporal before answering 250."""

    def __init__(
        self,
        store: MailRegistry,
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
        # The span is current while the jobs start, so each job's trace continues this one.
        with trace.get_tracer(telemetry.TRACER_NAME).start_as_current_span("mail receive", attributes={
            "threadline.mail.recipients": len(envelope.rcpt_tos),
        }) as span:
            answer = await self._receive(envelope)
            span.set_attribute("threadline.mail.answer", answer)
            return answer

    async def _receive(self, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        try:
            mail = parse_mail(raw)
        except Exception as e:  # noqa: BLE001 - anything unparseable is refused, never lost silently
            telemetry.outside(telemetry.MAIL, "mail received, refused, sent", event="rejected")
            return f"554 5.6.0 the message cannot be parsed: {e}"
        automatic = mail.automatic(envelope.mail_from)
        if automatic is None and not allowed(mail.from_address, self.allow):
            log.info("mail: refused mail from %s (not in --mail-allow)", mail.from_address)
            telemetry.outside(telemetry.MAIL, "mail received, refused, sent", event="rejected")
            return f"550 5.7.1 <{mail.from_address}> may not write to this mailbox"
        try:
            for address in dict.fromkeys(envelope.rcpt_tos):
                await self._accept(address, raw, mail, automatic)
        except _Unavailable as e:
            log.warning("mail: %s", e)
            return "451 4.3.0 cannot hand the message over right now, try again later"
        telemetry.outside(telemetry.MAIL, "mail received, refused, sent", event="received")
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
        await start_job(
            client, MailJobWorkflow.run, job, workflow_id=job_workflow_id(job.room, job.queue, job.job_key),
            task_queue=job_task_queue(job.room, job.queue),
            search_attributes=start_attributes(room=job.room, queue=job.queue, channel="mail", job_status="queued"),
            memo={MEMO_KEY: job_memo(status)}, summary=f"mail from {job.sender}: {job.subject}"[:200],
        )


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
