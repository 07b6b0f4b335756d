"""Inbound mail as the agent reads it: MIME parsed to text, attachments, authentication results."""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import logging
import re
from dataclasses import dataclass
from email.message import EmailMessage
from html.parser import HTMLParser

from threadline.channels.mail.addresses import AUTO_PRECEDENCE, SYSTEM_SENDERS, message_ids

log = logging.getLogger("threadline.mail")


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
        found.append((safe_file_name(name or f"attachment-{n}"), data))
    return found


def safe_file_name(name: str) -> str:
    base = name.replace("\\", "/").rpartition("/")[2]
    base = re.sub(r"[^\w.+-]+", "_", base).strip("._") or "attachment"
    return base[:120]
