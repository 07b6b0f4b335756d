"""Approvals by mail: for a thread that came in by mail, each tool call that waits for approval is mailed to the
`--approver` addresses; an approver's answer in that mail thread whose first line is `approve` or `deny REASON`
decides it. Anything else (another sender, another first line) decides nothing, and the mail job says why.

The request's Message-ID is derived from the approval id, so a retried send is one mail, and the answer's
In-Reply-To names the approval: `<approval.SEQ.THREADHASH@domain>`, SEQ being the call's place in its thread.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import re
from datetime import UTC, datetime
from email.message import EmailMessage

from temporalio.client import Client
from threadline.channels.approvals import ApprovalError, decide_approval
from threadline.channels.mail.addresses import reply_subject
from threadline.channels.mail.parsing import ParsedMail
from threadline.channels.mail.registry import MailRegistry
from threadline.channels.mail.replies import claim_outbound, send_recorded
from threadline.models.spec import AgentSpec
from threadline.models.thread import ApprovalDecision, ApprovalRequest, Turn

APPROVAL_MESSAGE_ID = re.compile(r"^<approval\.(\d+)\.[0-9a-f]{16}@[^>]+>$")
DECISION = re.compile(r"^\s*(approve|approved|yes|deny|denied|no)\b[\s:,.-]*(.*)$", re.IGNORECASE)


def approval_message_id(approval_id: str, mailbox: str) -> str:
    thread_id, _, seq = approval_id.rpartition(":")
    digest = hashlib.sha256(thread_id.encode()).hexdigest()[:16]
    return f"<approval.{seq}.{digest}@{mailbox.rpartition('@')[2]}>"


def parse_decision(body: str) -> tuple[bool, str] | None:
    """The first non-empty line: `approve` (or approved, yes) → (True, ''); `deny REASON` (or denied, no) →
    (False, REASON); anything else → None."""
    first = next((line for line in body.splitlines() if line.strip()), "")
    match = DECISION.match(first)
    if match is None:
        return None
    approve = match.group(1).lower() in ("approve", "approved", "yes")
    return approve, "" if approve else match.group(2).strip()


def build_request_mail(request: ApprovalRequest, mailbox: str, approvers: list[str], subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = mailbox
    msg["To"] = ", ".join(approvers)
    msg["Subject"] = f"Approval needed: {request.tool} ({reply_subject(subject)})"
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    msg["Message-ID"] = approval_message_id(request.approval_id, mailbox)
    msg["Auto-Submitted"] = "auto-generated"
    expires = datetime.fromtimestamp(request.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    msg.set_content(
        f"The agent wants to call the tool {request.tool} with these arguments:\n\n{request.arguments}\n\n"
        "Reply to this mail with a first line of\n\n  approve\n\nor\n\n  deny REASON\n\n"
        f"Without a decision by {expires} the call is denied.\n\nThread: {request.thread_id}\n"
        f"Approval: {request.approval_id}\n")
    return msg


class MailApprovals:
    """The mail side of approvals for one mailbox: mail out the requests, read the answers."""

    def __init__(self, spec: AgentSpec, mailbox: str, store: MailRegistry, client: Client,
                 env: dict[str, str]) -> None:
        self.spec, self.mailbox, self.store, self.client, self.env = spec, mailbox, store, client, env

    async def announce(self, request: ApprovalRequest, turn: Turn) -> None:
        """Mails the request to the approvers, once (the Message-ID is the approval's)."""
        subject = str((turn.metadata.get("mail") or {}).get("subject") or "")
        approvers = self.spec.approvals.approvers
        relay = self.spec.mail.smtp_relay
        if not approvers or not relay:
            return
        msg = build_request_mail(request, self.mailbox, approvers, subject)
        message_id = str(msg["Message-ID"])
        if await claim_outbound(self.store, self.spec.room, message_id, request.thread_id):
            await send_recorded(self.store, relay, msg, self.mailbox, approvers, request.thread_id, self.env)

    async def decide_from(self, mail: ParsedMail) -> tuple[str, str] | None:
        """None when the mail answers no approval request; else its thread and what it did, in words (for the
        job's record)."""
        for message_id in [*mail.in_reply_to, *reversed(mail.references)]:
            match = APPROVAL_MESSAGE_ID.match(message_id)
            thread_id = await asyncio.to_thread(self.store.thread_of, self.spec.room, [message_id]) if match else None
            if match and thread_id:
                return thread_id, await self._decide(mail, f"{thread_id}:{match.group(1)}")
        return None

    async def _decide(self, mail: ParsedMail, approval_id: str) -> str:
        sender = mail.from_address.lower()
        if sender not in {a.lower() for a in self.spec.approvals.approvers}:
            return f"an answer to approval {approval_id} from {sender}, who is not an --approver: it decides nothing"
        decision = parse_decision(mail.body)
        if decision is None:
            return (f"an answer to approval {approval_id} whose first line is neither 'approve' nor 'deny REASON': "
                    "it decides nothing")
        approve, reason = decision
        try:
            outcome = await decide_approval(self.client, ApprovalDecision(
                approval_id=approval_id, approve=approve, by=sender, via="mail", reason=reason))
        except ApprovalError as e:
            return f"an answer to approval {approval_id}: {e}"
        return ("already decided: " if outcome.already_decided else "") + outcome.describe()
