"""Inside a turn: steering, interrupting, the tool loop (parallel tools, max_steps, large output) and worker rules."""

from __future__ import annotations

import asyncio
import json

import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client
from threadline.activities.storage import RoomStorage
from threadline.channels.delivery import (
    interrupt_turn,
    new_thread_name,
    new_turn_id,
    steer_turn,
    submit_turn,
    thread_snapshot,
    wait_for_reply,
)
from threadline.models.spec import AgentSpec
from threadline.models.thread import Steer, Turn

from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse
from tests.runtime_support import (
    ACTIVITY_CANCEL_REQUESTED,
    ACTIVITY_CANCELED,
    Gate,
    event_types,
    eventually,
    items_of_turn,
    prompt_texts,
    record_history,
    running_agent,
    store_items,
)
from tests.tools_for_tests import tool_log_path


def _thread(spec: AgentSpec) -> str:
    return spec.ref.thread_id(new_thread_name())


async def test_steer_reaches_the_next_model_call(temporal_client: Client, agent_spec, agent_worker, fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    gate = Gate()
    fake_model.enqueue(gate.response(FakeResponse.text("draft about cats")))
    turn = Turn(turn_id=new_turn_id(), text="write about cats")
    call = asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, turn))
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    # Signals are in the history once sent, so both steers come before the model's answer.
    await steer_turn(temporal_client, thread_id, Steer(text="actually, make it about dogs"))
    await steer_turn(temporal_client, thread_id, Steer(text="and keep it short", turn_id=turn.turn_id))
    gate.release()
    reply = await asyncio.wait_for(call, 30)
    assert reply.status == "completed" and reply.steps == 2
    assert reply.text == "echo: and keep it short"
    assert fake_model.count() == 2
    assert prompt_texts(fake_model.requests[-1]) == [
        ("user", "write about cats"), ("assistant", "draft about cats"),
        ("user", "actually, make it about dogs"), ("user", "and keep it short"),
    ]
    items = items_of_turn(agent_spec.room, thread_id, turn.turn_id)
    assert [(i.type, i.data.get("steer", False)) for i in items] == [
        ("user", False), ("assistant", False), ("user", True), ("user", True), ("assistant", False),
    ]
    snap = await thread_snapshot(temporal_client, thread_id)
    assert snap.turns_completed == 1 and snap.queued_turn_ids == []
    await record_history(temporal_client.get_workflow_handle(thread_id), "steer")


async def test_interrupt_cancels_the_model_call(temporal_client: Client, agent_spec, agent_worker, fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    gate = Gate()
    fake_model.enqueue(gate.response(FakeResponse.text("the answer nobody should see")))
    long_turn = Turn(turn_id=new_turn_id(), text="think very hard")
    queued = Turn(turn_id=new_turn_id(), text="quick one")
    first = asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, long_turn))
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    second = asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, queued))
    await eventually(lambda: _queued(temporal_client, thread_id, [queued.turn_id]), what="second turn queued")
    await interrupt_turn(temporal_client, thread_id)

    cancelled = await asyncio.wait_for(first, 30)
    assert cancelled.status == "cancelled" and cancelled.error == "turn cancelled"
    after = await asyncio.wait_for(second, 30)
    assert after.status == "completed" and after.text == "echo: quick one"
    # The in-flight activity itself was cancelled, not just abandoned: releasing the model now writes nothing.
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    assert ACTIVITY_CANCEL_REQUESTED in event_types(history)
    assert ACTIVITY_CANCELED in event_types(history)
    gate.release()
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 0)
    assert [(i.type, i.text) for i in items_of_turn(agent_spec.room, thread_id, long_turn.turn_id)] == [
        ("user", "think very hard"), ("status", "turn cancelled"),
    ]
    assert "the answer nobody should see" not in str(fake_model.requests[-1].messages)
    # The thread stays usable and remembers the interrupted request.
    last = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="still there?"))
    assert last.status == "completed"
    assert prompt_texts(fake_model.requests[-1]) == [
        ("user", "think very hard"), ("user", "quick one"), ("assistant", "echo: quick one"), ("user", "still there?"),
    ]
    snap = await thread_snapshot(temporal_client, thread_id)
    assert (snap.status, snap.turns_completed) == ("idle", 3)
    await record_history(temporal_client.get_workflow_handle(thread_id), "interrupt")


async def _queued(client: Client, thread_id: str, expected: list[str]) -> bool:
    return (await thread_snapshot(client, thread_id)).queued_turn_ids == expected


async def test_interrupt_cancels_running_tools(temporal_client: Client, agent_spec, agent_worker, fake_model):
    spec = agent_spec.model_copy(update={"tools": ["tests.tools_for_tests:slow_lookup"]})
    await agent_worker(spec)
    thread_id = _thread(spec)
    fake_model.enqueue(FakeResponse.tool_calls([("slow_lookup", {"key": "k", "seconds": 30}),
                                                ("slow_lookup", {"key": "j", "seconds": 30})]))
    turn = Turn(turn_id=new_turn_id(), text="look it up")
    call = asyncio.create_task(submit_turn(temporal_client, spec.ref, thread_id, turn))

    async def tool_running():
        description = await temporal_client.get_workflow_handle(thread_id).describe()
        return [a for a in description.raw_description.pending_activities
                if a.activity_type.name == "run_tool" and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED]

    await eventually(lambda: _count_is(tool_running, 2), what="both tool activities started")
    await interrupt_turn(temporal_client, thread_id, "some-other-turn")  # not the running turn: ignored
    await interrupt_turn(temporal_client, thread_id, turn.turn_id)
    reply = await asyncio.wait_for(call, 20)
    assert reply.status == "cancelled"
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    assert event_types(history).count(ACTIVITY_CANCELED) == 2, "the tool activities were not cancelled"
    assert not tool_log_path().exists(), "the tool ran to completion"
    types = [i.type for i in items_of_turn(spec.room, thread_id, turn.turn_id)]
    assert types == ["user", "assistant", "status"]
    after = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="next"))
    assert after.status == "completed"
    roles = [m["role"] for m in fake_model.requests[-1].messages]
    assert roles == ["user", "assistant", "tool", "tool", "user"]  # the stopped calls got placeholder results
    await record_history(temporal_client.get_workflow_handle(thread_id), "interrupt_parallel_tools")


async def _count_is(read, n: int) -> bool:  # noqa: ANN001
    return len(await read()) == n


async def test_parallel_tool_calls(temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI):
    spec = agent_spec.model_copy(update={"tools": ["tests.tools_for_tests:slow_lookup"]})
    await agent_worker(spec)
    thread_id = _thread(spec)
    fake_model.script(lambda r: FakeResponse.text("tools done: " + " | ".join(m["content"] for m in r.tool_results)))
    fake_model.enqueue(FakeResponse.tool_calls([
        ("current_time", {}, "call_time"),
        ("slow_lookup", {"key": "alpha", "seconds": 1.0}, "call_alpha"),
        ("slow_lookup", {"key": "beta", "seconds": 1.0}, "call_beta"),
    ]))
    reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="gather facts"))
    assert reply.status == "completed" and reply.steps == 2
    assert reply.text.startswith("tools done: ") and "value of alpha | value of beta" in reply.text

    first, second = fake_model.requests
    assert {t["function"]["name"] for t in first.tools} == {"current_time", "slow_lookup"}
    tool_messages = [m for m in second.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["call_time", "call_alpha", "call_beta"]
    assert tool_messages[0]["content"].startswith("20")  # an ISO timestamp
    assert [m["content"] for m in tool_messages[1:]] == ["value of alpha", "value of beta"]

    windows = [json.loads(line) for line in tool_log_path().read_text().splitlines()]
    assert sorted(w["key"] for w in windows) == ["alpha", "beta"]
    a, b = windows
    assert a["start"] < b["end"] and b["start"] < a["end"], f"tool calls did not overlap: {windows}"
    items = items_of_turn(spec.room, thread_id, reply.turn_id)
    assert [i.type for i in items] == ["user", "assistant", "tool_result", "tool_result", "tool_result", "assistant"]
    assert [i.tool_call_id for i in items[2:5]] == ["call_time", "call_alpha", "call_beta"]
    await record_history(temporal_client.get_workflow_handle(thread_id), "tool_loop")


async def test_blocking_sync_tools_run_off_the_event_loop(temporal_client: Client, agent_spec, agent_worker,
                                                           fake_model: FakeOpenAI):
    spec = agent_spec.model_copy(update={"tools": ["tests.tools_for_tests:blocking_lookup"]})
    await agent_worker(spec)
    tool_log_path().parent.mkdir(parents=True, exist_ok=True)
    fake_model.enqueue(
        FakeResponse.tool_calls([("blocking_lookup", {"key": "alpha"}), ("blocking_lookup", {"key": "beta"})]),
        FakeResponse.text("both looked up"),
    )
    reply = await submit_turn(temporal_client, spec.ref, _thread(spec), Turn(turn_id=new_turn_id(), text="look"))
    assert reply.status == "completed" and reply.text == "both looked up"
    a, b = [json.loads(line) for line in tool_log_path().read_text().splitlines()]
    assert a["start"] < b["end"] and b["start"] < a["end"], f"a blocking tool held up the other: {a}, {b}"


async def test_max_steps_fails_the_turn_and_the_thread_recovers(temporal_client: Client, agent_spec, agent_worker,
                                                                 fake_model):
    spec = agent_spec.model_copy(update={"max_steps": 3})
    await agent_worker(spec)
    thread_id = _thread(spec)

    def always_a_tool(request: FakeRequest) -> FakeResponse | None:
        return FakeResponse.tool_calls([("current_time", {})]) if request.last_user_text == "loop forever" else None

    fake_model.script(always_a_tool)
    looping = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="loop forever"))
    assert looping.status == "failed" and looping.steps == 3
    assert "max_steps (3 model calls)" in (looping.error or "")
    assert fake_model.count() == 3
    items = items_of_turn(spec.room, thread_id, looping.turn_id)
    assert items[-1].type == "error" and "max_steps" in items[-1].text
    assert (await thread_snapshot(temporal_client, thread_id)).status == "failed"
    after = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="hello"))
    assert after.status == "completed" and after.text == "echo: hello"
    assert (await thread_snapshot(temporal_client, thread_id)).status == "idle"


async def test_large_tool_output_is_spilled_to_room_storage(temporal_client: Client, agent_spec, agent_worker,
                                                            fake_model):
    spec = agent_spec.model_copy(update={"tools": ["tests.tools_for_tests:big_output"]})
    await agent_worker(spec)
    thread_id = _thread(spec)
    size = 40_000
    fake_model.enqueue(FakeResponse.tool_calls([("big_output", {"size": size})]), FakeResponse.text("got it"))
    reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="dump"))
    assert reply.status == "completed" and reply.text == "got it"
    [result] = [i for i in items_of_turn(spec.room, thread_id, reply.turn_id) if i.type == "tool_result"]
    path = result.text.rsplit("saved to room storage at ", 1)[1].rstrip("]")
    assert f"[output truncated: {size} bytes in all" in result.text
    assert 16 * 1024 <= len(result.text.encode()) < 17 * 1024
    saved = RoomStorage.for_room(spec.room).read_text(path)
    assert len(saved) == size and saved.startswith(result.text[:1000])
    # The model sees what its context window allows of the preview (32,768 tokens assumed for an unknown model),
    # and always where the whole output is.
    tool_message = [m for m in fake_model.requests[-1].messages if m["role"] == "tool"][0]
    assert tool_message["content"].startswith(result.text[:8000])
    assert tool_message["content"].endswith(f"saved to room storage at {path}]")


async def test_rules_come_from_the_worker(temporal_client: Client, agent_spec, fake_model):
    thread_id = _thread(agent_spec)
    terse = agent_spec.model_copy(update={"rules": ["Be terse."]})
    async with running_agent(temporal_client, terse):
        await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="one"))
    assert fake_model.requests[-1].messages[0] == {"role": "system", "content": "Be terse."}
    chatty = agent_spec.model_copy(update={"rules": ["Be chatty.", "Use French."]})
    async with running_agent(temporal_client, chatty):
        await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="two"))
    assert prompt_texts(fake_model.requests[-1]) == [
        ("system", "Be chatty.\nUse French."), ("user", "one"), ("assistant", "echo: one"), ("user", "two"),
    ]
    # Per-turn instructions add to the worker's rules.
    async with running_agent(temporal_client, chatty):
        await submit_turn(temporal_client, agent_spec.ref, thread_id,
                          Turn(turn_id=new_turn_id(), text="three", instructions="Answer in one word."))
    assert fake_model.requests[-1].messages[0]["content"] == "Be chatty.\nUse French.\nAnswer in one word."
    assert len(store_items(agent_spec.room, thread_id)) == 6


async def test_a_steer_the_failed_turn_could_not_apply_runs_next(temporal_client: Client, agent_spec, agent_worker,
                                                                  fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    gate = Gate()
    fake_model.enqueue(gate.response(FakeResponse.error(400, message="rejected by the fake")))
    turn = Turn(turn_id=new_turn_id(), text="first")
    call = asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, turn))
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    await steer_turn(temporal_client, thread_id, Steer(text="and this too"))
    gate.release()
    failed = await asyncio.wait_for(call, 30)
    assert failed.status == "failed" and "rejected by the fake" in failed.error
    steered = await wait_for_reply(temporal_client, thread_id, f"{turn.turn_id}-steer-1", timeout=30)
    await record_history(temporal_client.get_workflow_handle(thread_id), "steer_after_failure")
    assert steered.status == "completed" and steered.text == "echo: and this too"
    assert [(i.type, i.text) for i in items_of_turn(agent_spec.room, thread_id, steered.turn_id)] == [
        ("user", "and this too"), ("assistant", "echo: and this too"),
    ]
    assert fake_model.count() == 2


def _report_tool_results(request: FakeRequest) -> FakeResponse:
    return FakeResponse.text("tools done: " + " | ".join(m["content"] for m in request.tool_results))


@pytest.mark.parametrize("tool", ["hangs", "hangs_blocking"])
async def test_a_tool_that_times_out_answers_the_model_and_the_turn_goes_on(
    temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI, tool: str
):
    spec = agent_spec.model_copy(update={"tools": [f"tests.tools_for_tests:{tool}"]})
    await agent_worker(spec)
    fake_model.script(_report_tool_results)
    fake_model.enqueue(FakeResponse.tool_calls([(tool, {})]))
    thread_id = _thread(spec)
    reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="wait"))
    assert reply.status == "completed", reply.error
    assert reply.text == f"tools done: error: the tool {tool} timed out after 1 s"
    result = next(i for i in items_of_turn(spec.room, thread_id, reply.turn_id) if i.type == "tool_result")
    assert result.data["ok"] is False and result.text == f"error: the tool {tool} timed out after 1 s"
    await record_history(temporal_client.get_workflow_handle(thread_id), f"tool_timeout_{tool}")


async def test_a_tool_whose_worker_stops_responding_answers_the_model(temporal_client: Client, agent_spec,
                                                                       agent_process, fake_model: FakeOpenAI):
    spec = agent_spec.model_copy(update={"tools": ["tests.tools_for_tests:freezes_the_worker"]})
    agent_process(spec)
    fake_model.script(_report_tool_results)
    fake_model.enqueue(FakeResponse.tool_calls([("freezes_the_worker", {})]))
    thread_id = _thread(spec)
    reply = await asyncio.wait_for(
        submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="go")), 90)
    assert reply.status == "completed", reply.error
    expected = "error: the tool freezes_the_worker stopped responding (its worker sent no heartbeat) and was given up"
    assert reply.text == f"tools done: {expected}"
    result = next(i for i in items_of_turn(spec.room, thread_id, reply.turn_id) if i.type == "tool_result")
    assert result.data["ok"] is False and result.text == expected
    await record_history(temporal_client.get_workflow_handle(thread_id), "tool_lost_worker")
