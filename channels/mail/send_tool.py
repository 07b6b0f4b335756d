"""The `send_email` tool: agents with a `mail:` channel start new outbound mail, linked to the current thread."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import email.utils
import json
import mimetypes
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from threadline.activities.storage import RoomStorage, StoragePathError
from threadline.activities.tools import Tool, ToolArgumentsError
from threadline.channels.mail.addresses import MailboxError, normalize_address, reply_message_id
from threadline.channels.mail.parsing import markdown_to_html, safe_file_name
from threadline.channels.mail.registry import open_mail_store
from threadline.channels.mail.replies import claim_outbound, send_recorded
from threadline.models.spec import AgentSpec


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
            files.append((safe_file_name(path), data))
        if sum(len(data) for _, data in files) > spec.mail.max_size:
            raise ToolArgumentsError(f"attachments: more than {spec.mail.max_size} bytes in all")
        relay = spec.mail.smtp_relay
        if not relay:
            return "error: no --smtp-relay is configured: the email cannot be sent"
        info = activity.info()
        message_id = reply_message_id(
            f"send_email|{info.workflow_id}|{info.workflow_run_id}|{info.activity_id}", sender
        )
        store = open_mail_store(spec.thread_store_url)
        if await claim_outbound(store, spec.room, message_id, info.workflow_id):
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
