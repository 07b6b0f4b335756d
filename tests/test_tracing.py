"""OpenTelemetry traces: a turn is one span, its model calls and tool calls are its children, and a worker that
replays the thread's history (a restarted worker) emits none of them again. Spans go to an in-memory exporter on
Temporal's replay-safe tracer provider, set up the way `telemetry.tracing_plugins` sets up the OTLP one."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from temporalio.client import Client
from temporalio.contrib.opentelemetry import create_tracer_provider
from threadline.channels.approvals import decide_approval, thread_approvals
from threadline.channels.delivery import connect, new_thread_name, new_turn_id, submit_turn
from threadline.models.spec import AgentSpec, ApprovalSettings
from threadline.models.thread import ApprovalDecision, Turn

from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.mail_support import job_done, mail_agent, mail_spec, new_mail, send
from tests.runtime_support import Gate, eventually, running_agent, runs_of

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    if not isinstance(trace.get_tracer_provider(), type(create_tracer_provider())):
        provider = create_tracer_provider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/unused")
    _EXPORTER.clear()
    return _EXPORTER


def _ancestors(span, by_id: dict) -> list[str]:
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_a_turn_is_a_span_with_its_model_and_tool_calls_and_replays_add_none(
        temporal_server, agent_spec, fake_model: FakeOpenAI, spans: InMemorySpanExporter):
    traced: Client = await connect(temporal_server.address)
    thread_id = agent_spec.ref.thread_id(new_thread_name())
    fake_model.enqueue(FakeResponse.tool_calls([("current_time", {})]), FakeResponse.text("it is late"))
    async with running_agent(traced, agent_spec):
        first = await submit_turn(traced, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="time?"))
    assert first.status == "completed"
    async with running_agent(traced, agent_spec):  # a new worker: it replays the thread's history first
        second = await submit_turn(traced, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="thanks"))
    assert second.status == "completed"

    def finished() -> list:
        done = [s for s in spans.get_finished_spans() if s.name == "turn"]
        return done if len(done) >= 2 else []

    turns = await eventually(finished, 30, what="two turn spans")
    assert [t.attributes["threadline.turn_id"] for t in turns] == [first.turn_id, second.turn_id]
    assert {t.attributes["threadline.status"] for t in turns} == {"completed"}
    finished_spans = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished_spans}
    chats = [s for s in finished_spans if s.name == "chat fake-model"]
    tools = [s for s in finished_spans if s.name == "execute_tool current_time"]
    assert len(chats) == 3 and len(tools) == 1  # not one more after the replay
    for span in [*chats, *tools]:
        assert "turn" in _ancestors(span, by_id), (span.name, _ancestors(span, by_id))
    assert chats[0].attributes["gen_ai.usage.input_tokens"] > 0
    assert len({t.context.trace_id for t in turns}) >= 1


async def test_a_turn_that_rolls_over_while_waiting_ends_its_span_without_an_error(
        rollover_server, room: str, fake_model: FakeOpenAI, spans: InMemorySpanExporter):
    """A turn waiting for an approval rolls its thread over (continue-as-new): its span in the first run is marked
    continued, not failed, and the turn goes on in a resumed span of the next run."""
    traced: Client = await connect(rollover_server.address)
    spec = AgentSpec(room=room, agent_name="support", model="fake-model",
                     tools=["tests.tools_for_tests:append_line"], approvals=ApprovalSettings(require=["*"]))
    thread_id = spec.ref.thread_id(new_thread_name())
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "ship it"})]), FakeResponse.text("done"))
    async with running_agent(traced, spec):
        turn = asyncio.create_task(submit_turn(traced, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="go")))
        await eventually(lambda: _runs(traced, thread_id, 2), 30, what="a rollover while the call waits")
        [request] = await thread_approvals(traced, thread_id)
        await decide_approval(traced, ApprovalDecision(approval_id=request.approval_id, approve=True, by="ann",
                                                       via="api"))
        reply = await asyncio.wait_for(turn, 30)
    assert reply.text == "done"

    def finished() -> list:
        done = [s for s in spans.get_finished_spans() if s.name == "turn"]
        return done if any(t.attributes.get("threadline.status") for t in done) else []

    turns = await eventually(finished, 30, what="the resumed turn's span")
    continued = [t for t in turns if t.attributes.get("threadline.continued_as_new")]
    assert continued and all(t.status.status_code == StatusCode.UNSET and not t.events for t in continued)
    assert [t.attributes["threadline.status"] for t in turns if t not in continued] == ["completed"]
    assert [t.attributes["threadline.resumed"] for t in turns] == [False] + [True] * (len(turns) - 1)


async def _runs(client: Client, thread_id: str, count: int):
    found = await runs_of(client, thread_id)
    return found if len(found) >= count else None


async def test_a_mail_is_one_trace_from_its_receipt_to_its_reply(
        temporal_server, temporal_client: Client, agent_spec, mailbox, sink, spans: InMemorySpanExporter):
    spec = mail_spec(agent_spec, sink)
    async with mail_agent(temporal_server, spec) as port:
        msg = new_mail("Where is my order?")
        assert await send(port, msg) == 250
        assert (await job_done(temporal_client, spec, msg["Message-ID"])).status == "completed"

    def finished() -> list:
        done = {s.name: s for s in spans.get_finished_spans()}
        return list(done.values()) if {"mail receive", "mail send", "turn"} <= done.keys() else []

    finished_spans = await eventually(finished, 30, what="the mail's spans")
    by_id = {s.context.span_id: s for s in finished_spans}
    [receive] = [s for s in finished_spans if s.name == "mail receive"]
    [job] = [s for s in finished_spans if s.name.startswith("job ")]
    [turn] = [s for s in finished_spans if s.name == "turn"]
    [sent] = [s for s in finished_spans if s.name == "mail send"]
    assert receive.attributes["threadline.mail.answer"].startswith("250")
    assert "mail receive" in _ancestors(job, by_id)
    assert {"job " + job.attributes["threadline.queue"], "mail receive"} <= set(_ancestors(turn, by_id))
    assert "job " + job.attributes["threadline.queue"] in _ancestors(sent, by_id)
    assert job.attributes["threadline.job.status"] == "completed"
    assert sent.attributes["threadline.thread_id"] == turn.attributes["threadline.thread_id"]
    assert len(sink.messages) == 1


def test_an_agent_process_exports_its_spans_over_otlp(temporal_server, room: str, fake_model: FakeOpenAI) -> None:
    """The standard OTEL_* variables are all it takes: a real `process join` posts its spans to an OTLP/HTTP
    collector (here a small HTTP server that keeps what it receives)."""
    import http.server
    import threading

    from tests.cli_helpers import CliProcess, run_cli

    received: list[bytes] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}/v1/traces",
           "OTEL_SERVICE_NAME": "support-agent", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    agent = CliProcess("process", "join", "--room", room, "--agent-name", "support", "--model", "fake-model",
                       "--temporal-address", temporal_server.address, "--channel", "chat", "--http-port", "0",
                       env=env)
    try:
        agent.wait_for_line("task queue", stream="stdout", timeout=30)
        used = run_cli("process", "use", "--room", room, "--agent-name", "support", "--temporal-address",
                       temporal_server.address, "-m", "hello", env=env)
        assert used.returncode == 0, used.stderr
        deadline = time.monotonic() + 30
        while not any(b"turn" in r and b"chat fake-model" in b"".join(received) for r in received):
            assert time.monotonic() < deadline, f"no turn span reached the collector: {received!r}"
            time.sleep(0.1)
        assert b"support-agent" in b"".join(received)
    finally:
        agent.kill()
        collector.shutdown()


async def test_a_thread_evicted_mid_turn_logs_no_context_error(temporal_client: Client, agent_spec,
                                                               fake_model: FakeOpenAI, caplog: pytest.LogCaptureFixture):
    """A worker that stops mid-turn evicts the thread, whose coroutine is then closed from another context: the
    turn's span must not try to detach its token there (OpenTelemetry logs that as an ERROR with a traceback)."""
    thread_id = agent_spec.ref.thread_id(new_thread_name())
    gate = Gate()
    fake_model.script(lambda req: gate.response() if req.last_user_text == "held" else None)
    turn = Turn(turn_id=new_turn_id(), text="held")
    async with running_agent(temporal_client, agent_spec):
        pending = asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, turn))
        await fake_model.wait_for_async(lambda: fake_model.count() == 1)
    gate.release()
    async with running_agent(temporal_client, agent_spec):
        reply = await asyncio.wait_for(pending, 60)
    assert reply.text == "echo: held"
    # The evicted run's coroutine is closed when the collector finds it, after its worker's tasks have gone.
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if r.name == "opentelemetry.context"], caplog.text
