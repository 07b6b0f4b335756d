"""Payloads encrypted at rest: with THREADLINE_PAYLOAD_KEY no history holds a turn's text, a reply or a tool's
arguments in clear (every event of every workflow of the room is scanned, the way someone with namespace access
would read it); the codec server decodes for a caller with its token; a process with another key gets a clear
error; a rotated key still reads old threads."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import httpx
import pytest
from temporalio.client import Client
from threadline.channels.delivery import connect, new_thread_name, new_turn_id, submit_turn, thread_snapshot
from threadline.channels.mail.channel import MailChannel
from threadline.channels.payload_codec import ENCODING
from threadline.channels.queue import QueueChannel
from threadline.channels.queue_jobs import send_job, wait_for_job
from threadline.channels.registry import adapters_for
from threadline.channels.toolkit.room import Room
from threadline.models.thread import Turn
from threadline.workflows.search_attributes import ROOM_ATTRIBUTE

from tests.cli_helpers import CliProcess
from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.mail_support import can_connect, job_done, mail_spec, new_mail, send
from tests.runtime_support import eventually
from tests.temporal_server import free_port

SECRETS = ["the patient's name is Ada Lovelace", "card 4242-4242", "echo: the patient"]


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def clear_in_history(client: Client, room: str, texts: list[str], at_least: int = 1) -> dict[str, list[str]]:
    """{workflow id: the texts found in clear in its history's events}, once visibility lists `at_least` of the
    room's workflows (a scan of nothing proves nothing)."""

    async def scan() -> tuple[dict[str, list[str]]] | None:
        found: dict[str, list[str]] = {}
        scanned = 0
        async for execution in client.list_workflows(f'{ROOM_ATTRIBUTE.name} = "{room}"'):
            history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            raw = b"".join(event.SerializeToString() for event in history.events)
            scanned += 1
            if hits := [t for t in texts if t.encode() in raw]:
                found[execution.id] = hits
        return (found,) if scanned >= at_least else None  # a tuple: an empty finding is a finding

    (found,) = await eventually(scan, 30, what=f"{at_least} workflows of room {room} listed")
    return found


async def test_no_history_holds_the_threads_text_in_clear(temporal_server, temporal_client: Client, agent_spec,
                                                          agent_worker, fake_model: FakeOpenAI, monkeypatch, room,
                                                          mailbox, sink):
    # A control first: the same scan finds the text in an agent's histories without a key.
    plain_spec = agent_spec.model_copy(update={"room": f"{room}-plain"})
    await agent_worker(plain_spec)
    await submit_turn(temporal_client, plain_spec.ref, plain_spec.ref.thread_id(new_thread_name()),
                      Turn(turn_id=new_turn_id(), text=SECRETS[0]))
    assert SECRETS[0] in sum((await clear_in_history(temporal_client, plain_spec.room, SECRETS)).values(), [])

    old_key = key()
    monkeypatch.setenv("THREADLINE_PAYLOAD_KEY", f"k1:{old_key}")
    secure = await connect(temporal_server.address)
    spec = mail_spec(agent_spec, sink)
    await agent_worker(spec, [QueueChannel("jobs"), MailChannel(mailbox), *adapters_for(["toolkit:helper"])],
                       own_client=True)
    thread_id = agent_spec.ref.thread_id(new_thread_name())
    fake_model.enqueue(FakeResponse.tool_calls([("current_time", {"note": SECRETS[1]})]),
                       FakeResponse.text("echo: the patient is fine"))
    reply = await submit_turn(secure, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=SECRETS[0]))
    assert reply.text == "echo: the patient is fine"
    job = await send_job(secure, agent_spec.room, "jobs", {"prompt": SECRETS[0] + " (a job)"})
    assert (await wait_for_job(secure, agent_spec.room, job.job_id)).status == "completed"
    mail = new_mail(SECRETS[0] + " (a mail)", subject=SECRETS[1])
    await eventually(lambda: asyncio.to_thread(can_connect, spec.mail.smtp_port), 10, what="SMTP server up")
    assert await send(spec.mail.smtp_port, mail) == 250
    assert (await job_done(secure, spec, mail["Message-ID"])).status == "completed"
    assert SECRETS[0] in sink.messages[0].get_body(("plain",)).get_content()  # the reply reached the relay
    called = await Room(secure, agent_spec.room).invoke_tool("helper", "run_helper_task",
                                                             {"prompt": SECRETS[0] + " (a task)"})
    assert SECRETS[0] in called.text
    # Chat thread; queue job and its thread; mail job and its thread; the toolkit and its task's thread.
    assert await clear_in_history(temporal_client, agent_spec.room, SECRETS, at_least=7) == {}

    # The codec server decodes for the token, and only for it.
    history = await secure.get_workflow_handle(thread_id).fetch_history()
    encrypted = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    assert encrypted.metadata["encoding"] == ENCODING
    port = free_port()
    server = CliProcess("codec-server", "--port", str(port), "--token", "ops-token",
                        env={"THREADLINE_PAYLOAD_KEY": f"k1:{old_key}"})
    try:
        server.wait_for_line("codec server on", timeout=30)
        await eventually(lambda: _listening(port), 30, what="the codec server accepts connections")
        body = {"payloads": [{"metadata": {k: base64.b64encode(v).decode() for k, v in encrypted.metadata.items()},
                              "data": base64.b64encode(encrypted.data).decode()}]}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            refused = await http.post("/decode", json=body, headers={"Origin": "http://localhost:8233"})
            assert refused.status_code == 401
            assert refused.headers["access-control-allow-origin"] == "http://localhost:8233"
            decoded = await http.post("/decode", json=body, headers={"Authorization": "Bearer ops-token"})
            assert decoded.status_code == 200, decoded.text
            [payload] = decoded.json()["payloads"]
            start = json.loads(base64.b64decode(payload["data"]))
            assert start["state"]["thread_id"] == thread_id
    finally:
        server.kill()

    # Another key: a clear error, nothing changed. The old key among the new ones: old threads still read.
    monkeypatch.setenv("THREADLINE_PAYLOAD_KEY", f"k2:{key()}")
    stranger = await connect(temporal_server.address)
    with pytest.raises(Exception, match="encrypted with key 'k1', which this process does not have"):
        await thread_snapshot(stranger, thread_id)
    monkeypatch.setenv("THREADLINE_PAYLOAD_KEY", f"k2:{key()},k1:{old_key}")
    rotated = await connect(temporal_server.address)
    assert (await thread_snapshot(rotated, thread_id)).turns_completed == 1


def test_a_bad_key_is_a_usage_error() -> None:
    from tests.cli_helpers import run_cli

    result = run_cli("process", "use", "--room", "r", "--agent-name", "a", "-m", "hi",
                     env={"THREADLINE_PAYLOAD_KEY": "k1:not-base64!"})
    assert result.returncode == 2 and "THREADLINE_PAYLOAD_KEY: a key must be base64" in result.stderr


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
