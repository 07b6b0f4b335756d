"""`MailChannel`: `--channel mail:ADDRESS` consumes the mailbox's queue and may run the inbound SMTP server."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from threadline.channels.base import ChannelAdapter, ChannelContext, temporal_worker
from threadline.channels.mail.activities import MailActivities
from threadline.channels.mail.addresses import MailboxError, MailboxNotFound, normalize_address
from threadline.channels.mail.approvals import MailApprovals
from threadline.channels.mail.registry import MailRegistry, open_mail_store
from threadline.channels.mail.smtp_server import MailServer
from threadline.channels.queue import QueueActivities
from threadline.models.spec import AgentSpec, MailSettings
from threadline.workflows.jobs import (
    job_task_queue,
)
from threadline.workflows.mail_job import MailJobWorkflow

log = logging.getLogger("threadline.mail")


class MailChannel(ChannelAdapter):
    """`--channel mail:ADDRESS[?reply-all=true]`: consumes the mailbox's queue and, unless `--smtp-port 0`, runs the
    inbound SMTP server in the agent process."""

    def __init__(self, value: str) -> None:
        address, _, query = value.partition("?")
        self.address = normalize_address(address)
        self.reply_all = "reply-all=true" in query.lower()
        self.name = f"mail:{self.address}"

    def _mailbox(self, spec: AgentSpec, store: MailRegistry) -> Any:
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
        store = open_mail_store(context.spec.thread_store_url)
        mailbox = self._mailbox(context.spec, store)
        if not context.spec.mail.smtp_relay:
            log.warning("mail:%s has no --smtp-relay: replies cannot be sent", self.address)
        approvals = MailApprovals(context.spec, self.address, store, context.client, dict(os.environ))
        mail = MailActivities(context.spec, self.address, self.reply_all, store, approvals)
        # Approval requests are mailed only where approvers are named: otherwise no job polls for them.
        queue = QueueActivities(context.client, context.spec,
                                announce=approvals.announce if context.spec.approvals.approvers else None)
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

        server = MailServer(open_mail_store(context.spec.thread_store_url), client, host=settings.smtp_host, port=settings.smtp_port,
                            max_size=settings.max_size, allow=settings.allow, storage_url=context.spec.storage_url)
        try:
            await server.serve(stop)
        finally:
            _SERVING.discard(where)


_SERVING: set[tuple[str, int]] = set()
