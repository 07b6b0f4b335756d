"""Live turn events in the stream log: coalesced text deltas, tool calls, and a retry that restarts the text."""

from __future__ import annotations

from temporalio.client import Client

from activities.stream_log import StreamLog
from channels.delivery import new_thread_name, new_turn_id, submit_turn
from models import Turn
from tests.fake_openai import FakeOpenAI, FakeResponse


async def test_deltas_are_coalesced_and_add_up_to_the_reply(
    temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI
):
    await agent_worker(agent_spec)
    words = " ".join(f"w{n}" for n in range(200))
    fake_model.enqueue(FakeResponse.text(words, chunk_delay=0.002))
    thread_id = agent_spec.ref.thread_id(new_thread_name())
    turn = Turn(turn_id=new_turn_id(), text="long answer please")
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, turn)
    deltas = [e for e in StreamLog.for_room(agent_spec.room).events(thread_id, turn_id=turn.turn_id)]
    assert reply.text == words
    assert all(e.kind == "delta" and e.attempt == 1 for e in deltas)
    assert "".join(e.data["text"] for e in deltas) == words
    chunks = fake_model.requests[-1].response.content  # what the fake streamed, for the coalescing ratio
    assert chunks == words
    assert 2 <= len(deltas) < 60, f"{len(deltas)} delta events for one reply: not coalesced"


async def test_a_retried_model_call_announces_itself(
    temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI
):
    await agent_worker(agent_spec)
    fake_model.enqueue(
        FakeResponse.text("this attempt breaks off half way", chunk_delay=0.05, drop_after_chunks=3),
        FakeResponse.text("the answer"),
    )
    thread_id = agent_spec.ref.thread_id(new_thread_name())
    turn = Turn(turn_id=new_turn_id(), text="hi")
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, turn)
    assert reply.text == "the answer"
    events = StreamLog.for_room(agent_spec.room).events(thread_id, turn_id=turn.turn_id)
    kinds = [(e.kind, e.attempt) for e in events]
    assert ("retry", 2) in kinds
    retry_at = kinds.index(("retry", 2))
    assert all(attempt == 1 for _, attempt in kinds[:retry_at]), kinds
    second = "".join(e.data["text"] for e in events[retry_at + 1 :] if e.kind == "delta")
    assert second == "the answer"


async def test_tool_calls_are_announced(temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    thread_id = agent_spec.ref.thread_id(new_thread_name())
    turn = Turn(turn_id=new_turn_id(), text="CALL_TOOL current_time {}")
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, turn)
    assert reply.status == "completed"
    events = StreamLog.for_room(agent_spec.room).events(thread_id, turn_id=turn.turn_id)
    tools = [(e.kind, e.data.get("summary", "")[:12]) for e in events if e.kind.startswith("tool")]
    assert tools[0] == ("tool_started", "current_time")
    assert tools[1][0] == "tool_finished"
