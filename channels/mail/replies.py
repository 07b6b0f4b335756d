"""Outbound mail: a reply composed in its thread (In-Reply-To, References, derived Message-ID), sent once through
the relay and recorded."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import email.utils
import smtplib
import ssl
from datetime import datetime, timezone
from email.message import EmailMessage

from temporalio.exceptions import ApplicationError
from threadline.activities.heartbeat import heartbeating
from threadline.channels.mail.addresses import MAX_REFERENCES, reply_subject
from threadline.channels.mail.parsing import ParsedMail, markdown_to_html
from threadline.channels.mail.registry import MailRegistry
from threadline.models.jobs import MailEnvelope
from threadline.models.limits import ErrorType

FAILURE_NOTICE = (
    "Sorry, I could not complete an answer to your message this time. It has been recorded, and you are welcome "
    "to write again."
)



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


async def claim_outbound(store: MailRegistry, room: str, message_id: str, thread_id: str) -> bool:
    """False when the mail was sent already; else records it as the thread's before it is sent, so that an answer
    that comes back fast finds the thread. One trip to a thread for both registry calls."""
    def claim() -> bool:
        if store.was_sent(message_id):
            return False
        store.remember(room, message_id, thread_id, "out")
        return True

    return await asyncio.to_thread(claim)


async def send_recorded(
    store: MailRegistry, relay: str, msg: EmailMessage, sender: str, recipients: list[str], thread_id: str,
    env: dict[str, str],
) -> None:
    """Sends `msg` through the relay (heartbeating) and records it as sent, keyed by its Message-ID. Callers check
    `store.was_sent` first (`claim_outbound`). Refusals are non-retryable `MailRejected`, an unreachable relay `MailUnavailable`."""
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
    await asyncio.to_thread(store.mark_sent, str(msg["Message-ID"]), thread_id, recipients)
