"""The mail channel end to end: real SMTP in both directions (smtplib sends to the agent's aiosmtpd server; a local
aiosmtpd sink stands in for the relay and captures replies), a real Temporal dev server and the fake model."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from email.utils import make_msgid

from temporalio.testing import ActivityEnvironment
from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import connect
from threadline.channels.mail.activities import MailActivities
from threadline.channels.mail.addresses import mail_job_key, reply_message_id
from threadline.channels.mail.registry import MailStore
from threadline.channels.mail.smtp_server import MailServer, lazy_client
from threadline.channels.queue_jobs import wait_for_job
from threadline.models.jobs import MailEnvelope, MailReplyRequest
from threadline.models.spec import AgentSpec, MailSettings
from threadline.workflows.jobs import public_job_id

from tests.cli_helpers import run_cli
from tests.conftest import REPO
from tests.fake_openai import FakeRequest, FakeResponse
from tests.mail_support import (
    ADDRESS,
    ALICE,
    job_done,
    job_id,
    mail_agent,
    mail_spec,
    new_mail,
    send,
)
from tests.runtime_support import eventually, record_history
from tests.temporal_server import TemporalDevServer


async def test_mailbox_whose_queue_is_named_like_its_address_is_answered(
    temporal_server, temporal_client, agent_spec, sink, fake_model
):
    address = "support-agent@mail.example.com"
    created = await asyncio.to_thread(run_cli, "mailbox", "create", "--address", address, "--room", agent_spec.room,
                                      "--queue", address)
    assert created.returncode == 0, created.stderr
    assert f"queue {address})" in created.stdout
    spec = mail_spec(agent_spec, sink)
    async with mail_agent(temporal_server, spec, channel=address) as port:
        first = new_mail("Hello there", to=address)
        assert await send(port, first, to=[address]) == 250
        mailbox = MailStore.default().mailbox(address)
        assert mailbox is not None and mailbox.queue == address
        job = public_job_id(address, mail_job_key(address, first["Message-ID"]))
        await eventually(lambda: temporal_client.get_workflow_handle(f"{spec.room}/.queues/{job}").describe(), 30)
        status = await asyncio.wait_for(wait_for_job(temporal_client, spec.room, job), 60)
        assert status.status == "completed", status
        assert len(sink.messages) == 1 and sink.messages[0]["From"] == address


async def test_a_stranger_who_knows_a_message_id_gets_a_thread_of_their_own(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    spec = mail_spec(agent_spec, sink)
    async with mail_agent(temporal_server, spec) as port:
        first = new_mail("My card number ends in 4242", Cc="bob@example.com")
        assert await send(port, first) == 250
        job = await job_done(temporal_client, spec, first["Message-ID"])
        reply = sink.messages[0]

        stolen = new_mail("What did Alice say?", "Re: Order 42", sender="mallory@evil.example",
                          In_Reply_To=reply["Message-ID"], References=f"{first['Message-ID']} {reply['Message-ID']}")
        assert await send(port, stolen) == 250
        hijack = await job_done(temporal_client, spec, stolen["Message-ID"])
        assert hijack.status == "completed" and hijack.thread_id != job.thread_id
        seen = json.dumps(fake_model.requests[-1].messages)
        assert "4242" not in seen and "What did Alice say?" in seen
        assert sink.messages[-1]["To"] == "mallory@evil.example"

        # Those who took part go on in the thread: the sender and whoever was copied.
        bob = new_mail("Bob here, adding to this", "Re: Order 42", sender="bob@example.com",
                       In_Reply_To=reply["Message-ID"])
        assert await send(port, bob) == 250
        assert (await job_done(temporal_client, spec, bob["Message-ID"])).thread_id == job.thread_id
        assert "4242" in json.dumps(fake_model.requests[-1].messages)


async def test_a_body_in_an_unknown_charset_reaches_the_model_with_a_note(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    spec = mail_spec(agent_spec, sink)
    message_id = make_msgid(domain="example.com")
    raw = (f"From: {ALICE}\r\nTo: {ADDRESS}\r\nSubject: Odd charset\r\nMessage-ID: {message_id}\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\nPlease refund order 77 \xe2\x82\xac\r\n").encode("latin-1")

    def deliver_raw() -> None:
        with smtplib.SMTP("127.0.0.1", spec.mail.smtp_port, timeout=60) as smtp:
            smtp.sendmail("alice@example.com", [ADDRESS], raw)

    async with mail_agent(temporal_server, spec):
        await asyncio.to_thread(deliver_raw)
        job = await job_done(temporal_client, spec, message_id)
        assert job.status == "completed"
        prompt = fake_model.requests[-1].last_user_text
        assert "Please refund order 77" in prompt and "(no text)" not in prompt
        assert "could not be decoded as x-no-such-charset" in prompt


async def test_new_mail_is_answered_in_thread_and_replies_continue_it(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    spec = mail_spec(agent_spec, sink)
    async with mail_agent(temporal_server, spec) as port:
        first = new_mail("Where is my order?", Cc="bob@example.com")
        assert await send(port, first) == 250
        job = await job_done(temporal_client, spec, first["Message-ID"])
        assert job.status == "completed" and job.agent == "support"
        assert len(sink.messages) == 1
        reply = sink.messages[0]
        assert reply["From"] == ADDRESS and reply["To"] == "alice@example.com" and reply["Cc"] is None
        assert reply["Subject"] == "Re: Order 42"
        assert reply["In-Reply-To"] == first["Message-ID"]
        assert reply["References"] == first["Message-ID"]
        assert reply["Message-ID"] == job.metadata["mail"]["reply"]
        assert reply["Message-ID"].endswith("@example.com>") and reply["Auto-Submitted"] == "auto-replied"
        assert sink.envelopes[0] == (ADDRESS, ["alice@example.com"])
        assert reply.get_content_type() == "multipart/alternative"
        text = reply.get_body(("plain",)).get_content()
        html = reply.get_body(("html",)).get_content()
        assert "echo: " in text and "Where is my order?" in text and "<p>" in html
        prompt = fake_model.requests[-1].last_user_text
        for line in ("From: Alice Example <alice@example.com>", f"To: {ADDRESS}", "Cc: bob@example.com",
                     "Subject: Order 42", "Date: ", "Where is my order?"):
            assert line in prompt, prompt
        items = ThreadStore.for_room(spec.room).items(job.thread_id)
        assert items[0].sender == "Alice Example" and items[0].data["channel"] == f"mail:{ADDRESS}"
        assert ThreadStore.for_room(spec.room).thread(job.thread_id).name == "Order 42"

        # A reply to the reply: same thread, the model sees the earlier mail, no "Re: Re:".
        second = new_mail("And the invoice?", "Re: Re: Order 42", In_Reply_To=reply["Message-ID"],
                          References=f"{first['Message-ID']} {reply['Message-ID']}")
        assert await send(port, second) == 250
        job2 = await job_done(temporal_client, spec, second["Message-ID"])
        assert job2.thread_id == job.thread_id and len(sink.messages) == 2
        mail_job = temporal_client.get_workflow_handle(f"{spec.room}/.queues/{job_id(spec, second['Message-ID'])}")
        await record_history(mail_job, "mail_job")
        answer = sink.messages[1]
        assert answer["Subject"] == "Re: Order 42" and answer["In-Reply-To"] == second["Message-ID"]
        assert answer["References"].split() == [first["Message-ID"], reply["Message-ID"], second["Message-ID"]]
        history = [m["content"] for m in fake_model.requests[-1].messages if m["role"] == "user"]
        assert "Where is my order?" in history[0] and "And the invoice?" in history[-1]

        # References only (no In-Reply-To), naming the agent's last reply: still the same thread.
        third = new_mail("One more thing", "Order 42 again", References=answer["Message-ID"])
        assert await send(port, third) == 250
        job3 = await job_done(temporal_client, spec, third["Message-ID"])
        assert job3.thread_id == job.thread_id

        # Unrelated mail: a new thread named after its subject.
        other = new_mail("Hello", "Something else")
        assert await send(port, other) == 250
        job4 = await job_done(temporal_client, spec, other["Message-ID"])
        assert job4.thread_id != job.thread_id and "something-else" in job4.thread_id


async def test_duplicate_delivery_runs_once_and_reply_all(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    spec = mail_spec(agent_spec, sink)
    async with mail_agent(temporal_server, spec, f"{ADDRESS}?reply-all=true") as port:
        msg = new_mail("Please review", "Review", to=f"{ADDRESS}, carol@example.com", Cc="dave@example.com, alice@example.com",
                       Reply_To="alice-team@example.com")
        assert await send(port, msg) == 250
        assert await send(port, msg) == 250  # the sender retried: same Message-ID
        job = await job_done(temporal_client, spec, msg["Message-ID"])
        assert job.status == "completed"
        assert await send(port, msg) == 250  # once more after it finished
        assert len(sink.messages) == 1
        assert sum("Please review" in r.last_user_text for r in fake_model.requests) == 1
        reply = sink.messages[0]
        assert reply["To"] == "alice-team@example.com"
        assert [a.strip() for a in reply["Cc"].split(",")] == ["carol@example.com", "dave@example.com"]

        # A failed turn: a short, polite notice; the error stays in the thread and the job.
        fake_model.script(lambda req: FakeResponse.error(400, message="bad body") if "break" in req.last_user_text else None)
        broken = new_mail("please break", "Broken")
        assert await send(port, broken) == 250
        failed = await job_done(temporal_client, spec, broken["Message-ID"])
        assert failed.status == "failed" and "HTTP 400" in failed.error
        notice = sink.messages[1]
        assert notice["In-Reply-To"] == broken["Message-ID"] and "Sorry" in notice.get_body(("plain",)).get_content()
        assert "bad body" not in notice.as_string()
        items = ThreadStore.for_room(spec.room).items(failed.thread_id)
        assert items[-1].type == "error" and "HTTP 400" in items[-1].text


async def test_bounces_and_automatic_mail_are_recorded_not_answered(
    temporal_server, temporal_client, agent_spec, mailbox, sink
):
    spec = mail_spec(agent_spec, sink)
    boundary = "b0undary"
    bounce = email.message_from_bytes((
        "From: Mail Delivery System <MAILER-DAEMON@example.net>\r\n"
        f"To: {ADDRESS}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {make_msgid(domain='example.net')}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode(), policy=email.policy.default)
    automatic = [
        bounce,
        new_mail("I am out of office", "Out of office", Auto_Submitted="auto-replied"),
        new_mail("newsletter", "News", Precedence="bulk"),
        new_mail("no return", "Empty return path", Return_Path="<>"),
    ]
    async with mail_agent(temporal_server, spec) as port:
        for msg in automatic:
            assert await send(port, msg) == 250
        envelope_bounce = new_mail("bounced", "Delivery failure")
        assert await send(port, envelope_bounce, mail_from="") == 250
        human = new_mail("A real question")
        assert await send(port, human) == 250
        await job_done(temporal_client, spec, human["Message-ID"])
    assert len(sink.messages) == 1 and sink.messages[0]["In-Reply-To"] == human["Message-ID"]
    recorded = {r["message_id"]: r for r in MailStore.default().inbound(ADDRESS)}
    ignored = [m["Message-ID"] for m in [*automatic, envelope_bounce]]
    assert all(recorded[i]["status"] == "ignored" for i in ignored), recorded
    assert "multipart/report" in recorded[bounce["Message-ID"]]["reason"]
    assert "Auto-Submitted" in recorded[automatic[1]["Message-ID"]]["reason"]
    assert recorded[human["Message-ID"]]["status"] == "queued"


async def test_mail_require_auth_answers_only_what_the_receiving_server_authenticated(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    spec = mail_spec(agent_spec, sink, require_auth="mx.example.com")
    good = new_mail("authentic", Authentication_Results="mx.example.com; spf=pass smtp.mailfrom=example.com; "
                                                        "dkim=pass header.d=example.com; dmarc=pass header.from=example.com")
    forged = new_mail("forged", Authentication_Results="relay.evil.example; dmarc=pass header.from=example.com")
    failed = new_mail("spoofed", Authentication_Results="mx.example.com; spf=fail; dkim=none; dmarc=fail")
    no_dmarc = new_mail("signed only", Authentication_Results="mx.example.com; dkim=pass header.d=example.com")
    async with mail_agent(temporal_server, spec) as port:
        for msg in (forged, failed, no_dmarc, good):
            assert await send(port, msg) == 250
        for msg in (forged, failed, no_dmarc, good):
            assert (await job_done(temporal_client, spec, msg["Message-ID"])).status == "completed"
    assert sorted(m["In-Reply-To"] for m in sink.messages) == sorted([good["Message-ID"], no_dmarc["Message-ID"]])
    seen = " ".join(r.last_user_text for r in fake_model.requests)
    assert "forged" not in seen and "spoofed" not in seen and "authentic" in seen


async def test_smtp_refusals_unknown_recipient_size_and_allowlist(
    temporal_server, temporal_client, agent_spec, mailbox, sink
):
    spec = mail_spec(agent_spec, sink, max_size=8192, allow=["@example.com", "boss@partner.org"])
    async with mail_agent(temporal_server, spec) as port:
        assert await send(port, new_mail("hi", to="nobody@example.com")) == 550
        assert await send(port, new_mail("x" * 20000)) == 552
        assert await send(port, new_mail("let me in", sender="Eve <eve@evil.org>")) == 550
        boss = new_mail("from a partner", sender="Boss <boss@partner.org>")
        assert await send(port, boss) == 250
        job = await job_done(temporal_client, spec, boss["Message-ID"])
        assert job.status == "completed"
    assert [m["To"] for m in sink.messages] == ["boss@partner.org"]


async def test_attachment_saved_under_the_thread_and_read_by_a_tool(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    def script(request: FakeRequest) -> FakeResponse | None:
        marker = "Attachments (room storage): "
        if marker in request.last_user_text and not request.tool_results:
            path = request.last_user_text.split(marker)[1].split(",")[0].strip()
            return FakeResponse.tool_calls([("storage_read", {"path": path})])
        if request.tool_results:
            return FakeResponse.text("The file says: " + str(request.tool_results[0]["content"]))
        return None

    fake_model.script(script)
    spec = mail_spec(agent_spec.model_copy(update={"storage": True}), sink)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, ADDRESS, "Notes attached"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content("<p>Please read <b>the notes</b>.</p>", subtype="html")
    msg.add_attachment(b"the secret is 42", maintype="text", subtype="plain", filename="../notes.txt")
    async with mail_agent(temporal_server, spec) as port:
        assert await send(port, msg) == 250
        job = await job_done(temporal_client, spec, msg["Message-ID"])
    assert job.status == "completed", job.error
    prompt = fake_model.requests[0].last_user_text
    assert "Please read the notes." in prompt and "<b>" not in prompt
    thread_path = job.thread_id.partition("/")[2]
    items = ThreadStore.for_room(spec.room).items(job.thread_id)
    [path] = items[0].data["attachments"]
    assert path.startswith(f"{thread_path}/mail/") and path.endswith("/notes.txt")
    assert path in prompt
    assert "the secret is 42" in sink.messages[0].get_body(("plain",)).get_content()


async def test_temporal_down_answers_451_and_the_retry_succeeds(room, sink):
    server = TemporalDevServer()
    await server.astart()
    try:
        MailStore.default().create_mailbox(ADDRESS, room)
        smtp = MailServer(MailStore.default(), lazy_client(lambda: connect(server.address)), port=0,
                          handoff_timeout=5)
        await smtp.start()
        try:
            assert await send(smtp.port, new_mail("while up")) == 250
            await server.astop()
            msg = new_mail("while down")
            assert await send(smtp.port, msg) == 451
            assert MailStore.default().inbound_status(mail_job_key(ADDRESS, msg["Message-ID"])) is None
            await server.astart()
            assert await send(smtp.port, msg) == 250
        finally:
            await smtp.close()
        client = await connect(server.address)
        handle = client.get_workflow_handle(f"{room}/.queues/{job_id_in(room, msg['Message-ID'])}")
        assert (await handle.describe()).status is not None
    finally:
        await server.astop()
        server.close()


def job_id_in(room: str, message_id: str) -> str:
    mailbox = MailStore.default().mailbox(ADDRESS)
    assert mailbox is not None and mailbox.room == room
    return public_job_id(mailbox.queue, mail_job_key(ADDRESS, message_id))


class ConsumerProcess:
    def __init__(self, address: str, spec: AgentSpec) -> None:
        self.args = [sys.executable, "-m", "tests.mail_consumer_process", address, spec.model_dump_json(), ADDRESS]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> ConsumerProcess:
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"consumer process did not start (exit code {self.proc.wait()})")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def test_consumer_killed_before_the_reply_was_sent_replies_exactly_once(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    spec = agent_spec.model_copy(update={"mail": MailSettings(smtp_port=0, smtp_relay=sink.relay)})
    smtp = MailServer(MailStore.default(), lazy_client(lambda: connect(temporal_server.address)), port=0)
    await smtp.start()
    processes: list[ConsumerProcess] = []
    try:
        processes.append(await asyncio.to_thread(ConsumerProcess(temporal_server.address, spec).start))
        sink.hold_next()
        msg = new_mail("Kill me softly")
        assert await send(smtp.port, msg) == 250
        # The model answered and the reply's SMTP transaction is under way (held at RCPT): kill -9 the consumer.
        await eventually(lambda: sink.held.is_set(), 60, what="reply transaction started")
        job = job_id(spec, msg["Message-ID"])
        assert sum("Kill me softly" in r.last_user_text for r in fake_model.requests) == 1
        processes[0].kill()
        sink.release()
        processes.append(await asyncio.to_thread(ConsumerProcess(temporal_server.address, spec).start))
        done = await asyncio.wait_for(wait_for_job(temporal_client, spec.room, job), 60)
    finally:
        for process in processes:
            process.kill()
        await smtp.close()
    assert done.status == "completed", done.error
    assert len(sink.messages) == 1 and sink.messages[0]["In-Reply-To"] == msg["Message-ID"]
    assert sum("Kill me softly" in r.last_user_text for r in fake_model.requests) == 1


async def test_a_reply_recorded_as_sent_is_not_sent_again(agent_spec, mailbox, sink):
    """The other side of the window: an attempt that sent and recorded, then died before reporting, is retried;
    the retry finds the record and sends nothing."""
    spec = agent_spec.model_copy(update={"mail": MailSettings(smtp_port=0, smtp_relay=sink.relay)})
    activities = MailActivities(spec, ADDRESS, False, MailStore.default())
    request = MailReplyRequest(
        room=spec.room, thread_id=spec.ref.thread_id("t1"), turn_id="turn-1", status="completed", text="**Hi**",
        envelope=MailEnvelope(mailbox=ADDRESS, message_id="<m1@example.com>", subject="Hello",
                              to=["alice@example.com"], references=["<m1@example.com>"]),
    )
    env = ActivityEnvironment()
    first = await env.run(activities.send_mail_reply, request)
    again = await env.run(activities.send_mail_reply, request)
    assert first == again == reply_message_id("turn-1", ADDRESS)
    assert len(sink.messages) == 1
    assert "<strong>Hi</strong>" in sink.messages[0].get_body(("html",)).get_content()


async def test_an_approver_decides_by_mail_and_a_stranger_cannot(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    from threadline.models.spec import ApprovalSettings

    from tests.test_approvals import TOOLS, tools_done
    from tests.tools_for_tests import ledger_lines

    spec = mail_spec(agent_spec, sink).model_copy(update={
        "tools": TOOLS, "approvals": ApprovalSettings(approvers=["boss@example.com"])})
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "refund order 42"})]))
    async with mail_agent(temporal_server, spec) as port:
        first = new_mail("Please refund order 42")
        assert await send(port, first) == 250
        request = await eventually(lambda: next((m for m in sink.messages if m["To"] == "boss@example.com"), None),
                                   30, what="the approval request mail")
        assert request["Subject"] == "Approval needed: append_line (Re: Order 42)"
        assert '"line": "refund order 42"' in request.get_body().get_content()
        assert ledger_lines() == []

        stranger = new_mail("approve", "Re: Approval needed", sender="mallory@evil.example",
                            In_Reply_To=request["Message-ID"])
        assert await send(port, stranger) == 250
        ignored = await job_done(temporal_client, spec, stranger["Message-ID"])
        assert "mallory@evil.example, who is not an --approver: it decides nothing" in ignored.metadata["mail"]["ignored"]
        chatty = new_mail("Looks fine to me, I guess?", "Re: Approval needed", sender="boss@example.com",
                          In_Reply_To=request["Message-ID"])
        assert await send(port, chatty) == 250
        unclear = await job_done(temporal_client, spec, chatty["Message-ID"])
        assert "neither 'approve' nor 'deny REASON'" in unclear.metadata["mail"]["ignored"]
        assert ledger_lines() == []

        answer = new_mail("Approve\n\n> The agent wants to call the tool append_line", "Re: Approval needed",
                          sender="Boss <boss@example.com>", In_Reply_To=request["Message-ID"])
        assert await send(port, answer) == 250
        decided = await job_done(temporal_client, spec, answer["Message-ID"])
        assert decided.metadata["mail"]["ignored"].startswith("approved by boss@example.com (mail) at ")
        job = await job_done(temporal_client, spec, first["Message-ID"])
        assert job.status == "completed" and job.text == "tools done: appended 'refund order 42'"
        assert [line.split(" ", 1)[1] for line in ledger_lines()] == ["refund order 42"]
        replies = [m for m in sink.messages if m["To"] == "alice@example.com"]
        assert len(replies) == 1 and "appended 'refund order 42'" in replies[0].get_body(("plain",)).get_content()
        assert len([m for m in sink.messages if m["To"] == "boss@example.com"]) == 1
