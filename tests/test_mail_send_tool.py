"""The `send_email` tool: an agent with a `mail:` channel starts new outbound mail through the relay, once, linked to
the thread it was sent from (real SMTP both ways, a real Temporal dev server and the fake model)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from temporalio.testing import ActivityEnvironment
from threadline.activities.storage import RoomStorage
from threadline.activities.thread_store import ThreadStore
from threadline.activities.tools import ToolArgumentsError
from threadline.channels.mail.registry import MailStore
from threadline.channels.mail.send_tool import send_email_tools
from threadline.models.spec import AgentSpec

from tests.mail_support import ADDRESS, job_done, mail_agent, mail_spec, new_mail, send

BOB = "bob@example.com"


def tool_spec(agent_spec: AgentSpec, sink, *channels: str) -> AgentSpec:  # noqa: ANN001
    spec = mail_spec(agent_spec, sink)
    return spec.model_copy(update={"channels": list(channels or [f"mail:{ADDRESS}"]), "storage": True})


def call(name: str, **arguments: object) -> str:
    return f"CALL_TOOL {name} {json.dumps(arguments)}"


async def test_send_email_sends_once_and_an_answer_continues_the_thread(
    temporal_server, temporal_client, agent_spec, mailbox, sink, fake_model
):
    spec = tool_spec(agent_spec, sink)
    RoomStorage.for_spec(spec).write("reports/q1.csv", "month,total\njan,42\n")
    async with mail_agent(temporal_server, spec) as port:
        first = new_mail("\n".join([
            "Please send Bob the report.",
            call("send_email", to=[f"Bob <{BOB}>"], subject="Q1 report", body="Hi Bob, **the report** is attached.",
                 attachments=["reports/q1.csv"]),
            call("send_email", to=[BOB], subject="escape", body="x", attachments=["../../mail.sqlite3"]),
            call("send_email", to=[BOB], subject="missing", body="x", attachments=["reports/none.csv"]),
            call("send_email", to=["not an address"], subject="bad", body="x"),
        ]))
        assert await send(port, first) == 250
        job = await job_done(temporal_client, spec, first["Message-ID"])
        assert job.status == "completed"

        outbound = [m for m in sink.messages if m["Subject"] == "Q1 report"]
        assert len(outbound) == 1 and len(sink.messages) == 2  # the tool's mail and the reply to Alice
        mail = outbound[0]
        assert mail["From"] == ADDRESS and mail["To"] == BOB and mail["In-Reply-To"] is None
        assert sink.envelopes[sink.messages.index(mail)] == (ADDRESS, [BOB])
        assert "the report" in mail.get_body(("plain",)).get_content()
        assert "<strong>the report</strong>" in mail.get_body(("html",)).get_content()
        [attachment] = list(mail.iter_attachments())
        assert attachment.get_filename() == "q1.csv" and attachment.get_content() == "month,total\njan,42\n"

        results = [i for i in ThreadStore.for_room(spec.room).items(job.thread_id) if i.type == "tool_result"]
        assert len(results) == 4
        assert results[0].data["ok"] and mail["Message-ID"] in results[0].text, results[0].text
        for result, words in zip(results[1:], ("must not contain '..'", "no file at 'reports/none.csv'",
                                               "is not a valid email address")):
            assert not result.data["ok"] and result.text.startswith("error:") and words in result.text, result.text
        assert MailStore.default().thread_of(spec.room, [mail["Message-ID"]]) == job.thread_id

        # Bob answers the tool's mail (it names only that mail): the same thread, and the model sees the earlier turn.
        answer = new_mail("Thanks, got it.", "Re: Q1 report", sender=f"Bob <{BOB}>",
                          In_Reply_To=mail["Message-ID"], References=mail["Message-ID"])
        assert await send(port, answer) == 250
        job2 = await job_done(temporal_client, spec, answer["Message-ID"])
        assert job2.status == "completed" and job2.thread_id == job.thread_id
        seen = json.dumps(fake_model.requests[-1].messages)
        assert "Please send Bob the report." in seen and "Thanks, got it." in seen
        assert len([m for m in sink.messages if m["Subject"] == "Q1 report"]) == 1
        assert sink.messages[-1]["To"] == BOB and sink.messages[-1]["Subject"] == "Re: Q1 report"


async def test_a_retried_send_email_sends_once_from_the_chosen_mailbox(agent_spec, sink):
    other = "sales@example.com"
    spec = tool_spec(agent_spec, sink, f"mail:{ADDRESS}", f"mail:{other}?reply-all=true")
    [tool] = send_email_tools(spec, RoomStorage.for_spec(spec))
    arguments = json.dumps({"to": [BOB], "subject": "Hello", "body": "hi", "from": other})
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=f"{spec.room}/support/t1", activity_id="7")
    first = await env.run(tool.call, arguments)
    env.info = dataclasses.replace(env.info, attempt=2)
    again = await env.run(tool.call, arguments)
    assert first == again and len(sink.messages) == 1
    assert sink.messages[0]["From"] == other and sink.messages[0]["Message-ID"].endswith("@example.com>")
    assert MailStore.default().thread_of(spec.room, [sink.messages[0]["Message-ID"]]) == f"{spec.room}/support/t1"
    # Another call (another activity) is another mail; a mailbox the agent does not have is refused.
    env.info = dataclasses.replace(env.info, activity_id="8")
    await env.run(tool.call, json.dumps({"to": [BOB], "subject": "Hello", "body": "hi"}))
    assert len(sink.messages) == 2 and sink.messages[1]["From"] == ADDRESS
    with pytest.raises(ToolArgumentsError, match="not one of this agent's mailboxes"):
        await env.run(tool.call, json.dumps({"to": [BOB], "subject": "x", "body": "x", "from": "x@example.com"}))


def test_no_mail_channel_no_tool(agent_spec):
    spec = agent_spec.model_copy(update={"channels": ["chat"]})
    assert send_email_tools(spec, RoomStorage.for_spec(spec)) == []
