"""`MailActivities`: the consumer side of a mail job — read the stored mail into a turn, send the reply once."""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import logging
import os

from opentelemetry import trace
from temporalio import activity
from temporalio.exceptions import ApplicationError
from threadline import telemetry
from threadline.activities.storage import RoomStorage
from threadline.activities.stores import open_thread_store
from threadline.channels.mail.addresses import allowed, reply_message_id, thread_slug
from threadline.channels.mail.approvals import MailApprovals
from threadline.channels.mail.parsing import ParsedMail, attachments_of, authentication_verdict, parse_mail
from threadline.channels.mail.registry import MailRegistry
from threadline.channels.mail.replies import FAILURE_NOTICE, build_reply, reply_references, send_recorded
from threadline.contracts import PREPARE_MAIL_TURN, SEND_MAIL_REPLY
from threadline.models.jobs import MailEnvelope, MailJobInput, MailReplyRequest, MailTurnPlan
from threadline.models.limits import MAX_TURN_TEXT_BYTES, ErrorType
from threadline.models.spec import AgentSpec
from threadline.models.thread import Turn
from threadline.workflows.jobs import (
    job_turn_id,
    job_workflow_id,
    public_job_id,
)

log = logging.getLogger("threadline.mail")


class MailActivities:
    """The consumer side of a mailbox: the agent, its settings and `?reply-all`."""

    def __init__(self, spec: AgentSpec, address: str, reply_all: bool, store: MailRegistry,
                 approvals: MailApprovals | None = None) -> None:
        self.spec = spec
        self.address = address
        self.reply_all = reply_all
        self.store = store
        self.approvals = approvals
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
        if self.approvals is not None and not mail.automatic() and self._authentic(mail)[0] and (
                decided := await self.approvals.decide_from(mail)) is not None:
            return MailTurnPlan(thread_id=decided[0], subject=mail.subject, skipped=decided[1])
        thread_id, new_thread = await asyncio.to_thread(self._thread_for, job, mail)
        if not allowed(mail.from_address, self.spec.mail.allow):
            return MailTurnPlan(thread_id=thread_id, subject=mail.subject,
                                skipped=f"{mail.from_address} is not in --mail-allow")
        authentic, said = self._authentic(mail)
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

    def _name_thread(self, request: MailReplyRequest) -> None:
        try:
            open_thread_store(request.room, self.spec.thread_store_url).rename(
                request.thread_id, request.thread_title or "(no subject)"
            )
        except Exception as e:  # noqa: BLE001 - a name is cosmetic: the reply still goes out
            activity.logger.warning("could not name thread %s after the mail's subject: %s", request.thread_id, e)

    def _authentic(self, mail: ParsedMail) -> tuple[bool, str]:
        if not self.spec.mail.require_auth:
            return True, ""
        return authentication_verdict(mail.message, self.spec.mail.require_auth)

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
        # Registry and store calls go to a thread, as every store call of an activity: they block.
        if request.thread_title:
            await asyncio.to_thread(self._name_thread, request)
        text = request.text
        if request.status != "completed":
            if not self.spec.mail.failure_notice:
                return "no reply: the turn failed and failure notices are off"
            text = FAILURE_NOTICE
        message_id = reply_message_id(request.turn_id, request.envelope.mailbox)
        if await asyncio.to_thread(self.store.was_sent, message_id):
            return message_id
        relay = self.spec.mail.smtp_relay
        if not relay:
            raise ApplicationError(
                "no --smtp-relay is configured: the reply cannot be sent", type=ErrorType.MAIL_CONFIG_ERROR, non_retryable=True
            )
        # Known before it is sent, so an answer to it that comes back fast finds its thread.
        await asyncio.to_thread(self.store.remember, request.room, message_id, request.thread_id, "out")
        msg = build_reply(request.envelope, message_id, text)
        recipients = list(dict.fromkeys([*request.envelope.to, *request.envelope.cc]))
        if not recipients:
            raise ApplicationError("the mail has no sender to answer", type=ErrorType.MAIL_REJECTED, non_retryable=True)
        with trace.get_tracer(telemetry.TRACER_NAME).start_as_current_span("mail send", attributes={
            "threadline.thread_id": request.thread_id, "threadline.turn_id": request.turn_id,
            "threadline.mail.recipients": len(recipients),
        }):
            await send_recorded(self.store, relay, msg, request.envelope.mailbox, recipients, request.thread_id,
                                self.env)
        telemetry.in_activity(telemetry.MAIL, "mail received, refused, sent", event="sent")
        return message_id
