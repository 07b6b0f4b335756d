"""Live turn events in the stream log: coalesced text deltas, tool calls, and a retry that restarts the text."""

from __future__ import annotations

import sqlite3

from temporalio.client import Client
from threadline.activities.stream_log import KEEP_SECONDS, StreamLog
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn
from threadline.models.thread import Turn

from tests.fake_openai import FakeOpenAI, FakeResponse, stream_pieces
from tests.runtime_support import eventually


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
    streamed = len(stream_pieces(words))  # the chunks the fake sent, one text piece each
    assert streamed >= 150
    assert 2 <= len(deltas) < streamed // 3, f"{len(deltas)} delta events for {streamed} chunks: not coalesced"


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


async def test_the_agent_prunes_stream_events_older_than_a_day(agent_spec, agent_worker):
    log = StreamLog.for_room(agent_spec.room)
    log.publish(f"{agent_spec.room}/t/old", "turn-old", 1, "delta", {"text": "from two days ago"})
    log.publish(f"{agent_spec.room}/t/live", "turn-live", 1, "delta", {"text": "from now"})
    with sqlite3.connect(log.path) as db:
        db.execute("UPDATE stream_events SET created_at=created_at-? WHERE turn_id='turn-old'", (KEEP_SECONDS + 3600,))
    await agent_worker(agent_spec)
    await eventually(lambda: not log.events(f"{agent_spec.room}/t/old"), 15, what="the old event pruned")
    assert [e.data["text"] for e in log.events(f"{agent_spec.room}/t/live")] == ["from now"]
