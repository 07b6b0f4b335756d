"""Turns on threads: continuity, isolation, FIFO under concurrency, duplicate delivery, usage, status and size limits."""

from __future__ import annotations

import asyncio
import json
import os

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from threadline.activities.thread_store import ThreadStore
from threadline.channels.attempts import attempt_journal, running_attempts
from threadline.channels.base import code_build_id
from threadline.channels.delivery import (
    connect,
    deliver_turn,
    new_thread_name,
    new_turn_id,
    start_turn,
    submit_turn,
    thread_snapshot,
    wait_for_reply,
)
from threadline.channels.process_identity import process_start
from threadline.contracts import LIST_AS_RUNNING
from threadline.models.spec import AgentSpec
from threadline.models.thread import Turn
from threadline.workflows.search_attributes import STATUS_ATTRIBUTE

from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.runtime_support import (
    LOCAL_ACTIVITY_MARKER,
    PATCH_MARKER,
    STORED_TRANSCRIPT_SUMMARY,
    ConcurrencyRecorder,
    Gate,
    eventually,
    marker_summaries,
    prompt_texts,
    record_history,
    store_items,
)


def _thread(spec: AgentSpec) -> str:
    return spec.ref.thread_id(new_thread_name())


async def test_continuity_across_turns(temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    texts = ["my name is Ada", "I live in Oslo", "what do you know about me?"]
    replies = [await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=t))
               for t in texts]
    assert [r.status for r in replies] == ["completed"] * 3
    assert [r.thread_id for r in replies] == [thread_id] * 3
    assert prompt_texts(fake_model.requests[-1]) == [
        ("user", "my name is Ada"), ("assistant", "echo: my name is Ada"),
        ("user", "I live in Oslo"), ("assistant", "echo: I live in Oslo"),
        ("user", "what do you know about me?"),
    ]
    items = store_items(agent_spec.room, thread_id)
    assert [i.seq for i in items] == sorted({i.seq for i in items})
    assert [(i.type, i.turn_id) for i in items] == [
        (kind, r.turn_id) for r in replies for kind in ("user", "assistant")
    ]
    await record_history(temporal_client.get_workflow_handle(thread_id), "plain_turns")


async def test_threads_are_isolated(temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    thread_a, thread_b = _thread(agent_spec), _thread(agent_spec)
    await submit_turn(temporal_client, agent_spec.ref, thread_a, Turn(turn_id=new_turn_id(), text="secret-alpha"))
    await submit_turn(temporal_client, agent_spec.ref, thread_a, Turn(turn_id=new_turn_id(), text="secret-beta"))
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_b, Turn(turn_id=new_turn_id(), text="hello B"))
    assert reply.text == "echo: hello B"
    prompt_b = fake_model.requests[-1].messages
    assert [m["content"] for m in prompt_b] == ["hello B"]
    assert "secret" not in str(prompt_b)
    assert [i.text for i in store_items(agent_spec.room, thread_b)] == ["hello B", "echo: hello B"]


async def test_fifo_under_20_concurrent_turns(temporal_client: Client, agent_spec, agent_worker, fake_model):
    """20 turns at once to one thread: more than Temporal's 10 in-flight updates, so some go by signal + poll."""
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    recorder = ConcurrencyRecorder(key=lambda r: "fifo")
    gate = Gate()
    fake_model.enqueue(gate.response())  # the first turn to reach the model waits until every turn is admitted
    fake_model.script(recorder)
    turns = [Turn(turn_id=f"fifo-{n:02d}-{new_turn_id()}", text=f"message {n:02d}") for n in range(20)]
    calls = [asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, t)) for t in turns]

    async def all_admitted():
        snap = await thread_snapshot(temporal_client, thread_id)
        return snap if snap.running_turn_id and len(snap.queued_turn_ids) == 19 else None

    # Admitted at once: no turn may wait for the client's RESOURCE_EXHAUSTED retries (about 15 s).
    snap = await eventually(all_admitted, timeout=8, what="all 20 turns admitted")
    admission = [snap.running_turn_id, *snap.queued_turn_ids]
    assert sorted(admission) == sorted(t.turn_id for t in turns)
    gate.release()
    replies = await asyncio.wait_for(asyncio.gather(*calls), 60)

    by_id = {t.turn_id: t for t in turns}
    assert [r.turn_id for r in replies] == [t.turn_id for t in turns]
    assert all(r.status == "completed" and r.text == f"echo: {by_id[r.turn_id].text}" for r in replies)
    assert recorder.max["fifo"] == 1, "the model saw two turns of one thread at once"
    assert [r.last_user_text for r in fake_model.requests] == [by_id[t].text for t in admission]
    assert fake_model.count() == 20
    items = store_items(agent_spec.room, thread_id)
    assert [(i.turn_id, i.type) for i in items] == [(t, kind) for t in admission for kind in ("user", "assistant")]
    snap = await thread_snapshot(temporal_client, thread_id)
    assert snap.turns_completed == 20 and snap.queued_turn_ids == [] and snap.status == "idle"


async def test_update_limit_reached_by_two_clients_falls_back_to_signal(temporal_server, temporal_client: Client,
                                                                      agent_spec, agent_worker, fake_model):
    """Two client processes (here: two connections) each stay under their own cap, together over Temporal's 10
    in-flight updates: the server's RESOURCE_EXHAUSTED must send the extra turns by signal, not fail them."""
    await agent_worker(agent_spec)
    other_client = await connect(temporal_server.address)
    thread_id = _thread(agent_spec)
    gate = Gate()
    # Held by text, not by order: a stray late request from an earlier test cannot take the gate.
    fake_model.script(lambda req: gate.response() if req.last_user_text == "message 00" else None)
    turns = [Turn(turn_id=new_turn_id(), text=f"message {n:02d}") for n in range(14)]
    # The first turn starts the thread and holds it; the limit is then the running workflow's (updates that race a
    # workflow's start are counted loosely by the server).
    calls = [asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, turns[0]))]
    await fake_model.wait_for_async(lambda: fake_model.count(lambda r: r.last_user_text == "message 00") == 1)
    calls += [
        asyncio.create_task(submit_turn(client, agent_spec.ref, thread_id, turn))
        for client, turn in zip([other_client, temporal_client] * 7, turns[1:])
    ]

    async def all_admitted():
        snap = await thread_snapshot(temporal_client, thread_id)
        return snap.running_turn_id and len(snap.queued_turn_ids) == 13

    # A turn behind this process's own waits for acceptance at most ACCEPT_WAIT_SECONDS, then goes by signal (3 s for
    # all 14 here; waiting out the client's retries of RESOURCE_EXHAUSTED took 16 s). On a loaded 2-core CI machine a
    # workflow task carrying updates was once lost ("Task not found when completing") and the turns took longer than
    # 45 s to be admitted again.
    await eventually(all_admitted, timeout=120, what="all 14 turns admitted")
    snap = await thread_snapshot(temporal_client, thread_id)
    assert snap.run_updates <= 10, "more than Temporal's 10 updates in flight: the signal fallback was not needed"
    gate.release()
    replies = await asyncio.wait_for(asyncio.gather(*calls), 60)
    assert [r.text for r in replies] == [f"echo: {t.text}" for t in turns]
    assert fake_model.count() == 14


async def test_start_turn_goes_by_update_and_by_signal_when_no_worker_accepts(
        temporal_client: Client, agent_spec, agent_worker, fake_model, monkeypatch):
    """`start_turn` (the chat API's POST) returns once the turn is the thread's. With no worker up it waits
    ACCEPT_WAIT_SECONDS for one, then queues the turn by signal; the worker that comes later gets that turn twice (the
    waiting update and the signal) and runs it once. With the worker up the update is accepted: no signal."""
    from threadline.channels import delivery

    monkeypatch.setattr(delivery, "ACCEPT_WAIT_SECONDS", 0.5)
    early = _thread(agent_spec)
    turn = Turn(turn_id=new_turn_id(), text="before the worker")
    await asyncio.wait_for(start_turn(temporal_client, agent_spec.ref, early, turn), 10)
    await agent_worker(agent_spec)
    reply = await wait_for_reply(temporal_client, early, turn.turn_id, timeout=30)
    assert reply.text == "echo: before the worker"
    later = _thread(agent_spec)
    second = Turn(turn_id=new_turn_id(), text="worker up")
    await start_turn(temporal_client, agent_spec.ref, later, second)
    assert (await wait_for_reply(temporal_client, later, second.turn_id, timeout=30)).text == "echo: worker up"
    assert fake_model.count() == 2
    assert [i.type for i in store_items(agent_spec.room, early)] == ["user", "assistant"]

    def kinds(history) -> list[str]:
        return [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events
                if e.event_type in (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
                                    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)]

    assert "WORKFLOW_EXECUTION_SIGNALED" in kinds(await temporal_client.get_workflow_handle(early).fetch_history())
    assert kinds(await temporal_client.get_workflow_handle(later).fetch_history()) == [
        "WORKFLOW_EXECUTION_UPDATE_ACCEPTED"]


async def test_duplicate_turn_id_runs_once(temporal_client: Client, agent_spec, agent_worker, fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    gate = Gate()
    fake_model.enqueue(gate.response(FakeResponse.text("the one answer")))
    turn = Turn(turn_id=new_turn_id(), text="only once please")
    first = asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, turn))
    second = asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, turn))
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    gate.release()
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert a == b and a.text == "the one answer"
    # Sequentially, and by signal (twice), after the turn completed: still the same reply, no new model call.
    again = await submit_turn(temporal_client, agent_spec.ref, thread_id, turn)
    await deliver_turn(temporal_client, agent_spec.ref, thread_id, turn)
    await deliver_turn(temporal_client, agent_spec.ref, thread_id, turn)
    polled = await wait_for_reply(temporal_client, thread_id, turn.turn_id, timeout=10)
    assert again == a and polled == a
    # A later turn runs, proving the duplicates were not merely still queued.
    later = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="next"))
    assert later.text == "echo: next"
    assert [r.last_user_text for r in fake_model.requests] == ["only once please", "next"]
    assert [(i.type, i.text) for i in store_items(agent_spec.room, thread_id)] == [
        ("user", "only once please"), ("assistant", "the one answer"), ("user", "next"), ("assistant", "echo: next"),
    ]


async def test_duplicate_delivery_by_signal_runs_once(temporal_client: Client, agent_spec, agent_worker, fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    turn = Turn(turn_id=new_turn_id(), channel="mail", text="mailed twice")
    await asyncio.gather(
        deliver_turn(temporal_client, agent_spec.ref, thread_id, turn),
        deliver_turn(temporal_client, agent_spec.ref, thread_id, turn),
    )
    reply = await wait_for_reply(temporal_client, thread_id, turn.turn_id, timeout=20)
    await deliver_turn(temporal_client, agent_spec.ref, thread_id, turn)
    updated = await submit_turn(temporal_client, agent_spec.ref, thread_id, turn)
    assert updated == reply and reply.text == "echo: mailed twice"
    assert fake_model.count() == 1
    assert [i.type for i in store_items(agent_spec.room, thread_id)] == ["user", "assistant"]


async def test_usage_per_turn_and_per_thread(temporal_client: Client, agent_spec, agent_worker, fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    fake_model.enqueue(
        FakeResponse.tool_calls([("current_time", {})], usage=(100, 7)),
        FakeResponse.text("it is now", usage=(120, 3)),
        FakeResponse.text("second", usage=(50, 2)),
    )
    first = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="time?"))
    second = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="again"))
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (220, 10, 230)
    assert first.usage.model_calls == 2 and first.steps == 2
    assert (second.usage.prompt_tokens, second.usage.completion_tokens, second.usage.total_tokens) == (50, 2, 52)
    info = ThreadStore.for_room(agent_spec.room).thread(thread_id)
    assert info is not None
    assert (info.usage.prompt_tokens, info.usage.completion_tokens, info.usage.total_tokens) == (270, 12, 282)
    assert info.usage.model_calls == 3
    snap = await thread_snapshot(temporal_client, thread_id)
    assert snap.usage == first.usage + second.usage
    assert [(r.turn_id, r.text) for r in snap.recent_replies] == [
        (first.turn_id, "it is now"), (second.turn_id, "second")
    ]


async def test_status_search_attributes_and_snapshot(temporal_client: Client, agent_spec, agent_worker, fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    room = agent_spec.room
    gate = Gate()
    fake_model.script(lambda req: gate.response() if req.last_user_text == "first" else None)
    running = Turn(turn_id=new_turn_id(), text="first")
    queued = Turn(turn_id=new_turn_id(), text="second")
    first = asyncio.create_task(submit_turn(temporal_client, agent_spec.ref, thread_id, running))
    await fake_model.wait_for_async(lambda: fake_model.count(lambda r: r.last_user_text == "first") == 1)
    await deliver_turn(temporal_client, agent_spec.ref, thread_id, queued)

    async def snapshot_with_queue():
        snap = await thread_snapshot(temporal_client, thread_id)
        return snap if snap.queued_turn_ids else None

    snap = await eventually(snapshot_with_queue, what="queued turn in snapshot")
    assert (snap.status, snap.running_turn_id, snap.queued_turn_ids) == ("running", running.turn_id, [queued.turn_id])

    async def listed(status: str) -> list[str]:
        query = f"ThreadlineRoom = '{room}' AND ThreadlineStatus = '{status}' AND ThreadlineAgent = 'support'"
        return [w.id async for w in temporal_client.list_workflows(query)]

    assert await eventually(lambda: listed("running"), what="thread listed as running") == [thread_id]
    gate.release()
    await first
    await wait_for_reply(temporal_client, thread_id, queued.turn_id, timeout=20)
    assert await eventually(lambda: listed("idle"), what="thread listed as idle") == [thread_id]
    snap = await thread_snapshot(temporal_client, thread_id)
    assert (snap.status, snap.running_turn_id, snap.queued_turn_ids, snap.turns_completed) == ("idle", None, [], 2)
    info = ThreadStore.for_room(room).thread(thread_id)
    assert info is not None and info.status == "idle" and info.name == "first"
    # The model call in flight asked for the listing, once: no timer in any turn.
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    signals = [e.workflow_execution_signaled_event_attributes.signal_name for e in history.events
               if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
    assert signals.count("list_as_running") == 1
    assert listing_upserts(history) == ["running", "idle"]
    assert EventType.EVENT_TYPE_TIMER_STARTED not in [e.event_type for e in history.events]
    await record_history(temporal_client.get_workflow_handle(thread_id), "listed_running")


def listing_upserts(history) -> list[str]:
    """The values the thread's status search attribute was set to, in order."""
    return [json.loads(e.upsert_workflow_search_attributes_event_attributes.search_attributes
                       .indexed_fields["ThreadlineStatus"].data)
            for e in history.events if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES]


async def test_a_late_listing_request_changes_nothing(temporal_client: Client, agent_spec, agent_worker):
    """A model call's request for the listing that reaches the thread after its turn ended (or for another turn) is
    ignored: the thread stays listed idle."""
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    turn = Turn(turn_id=new_turn_id(), text="quick")
    assert (await submit_turn(temporal_client, agent_spec.ref, thread_id, turn)).status == "completed"
    handle = temporal_client.get_workflow_handle(thread_id)
    await handle.signal(LIST_AS_RUNNING, turn.turn_id)
    await handle.signal(LIST_AS_RUNNING, "turn-of-someone-else")
    snap = await thread_snapshot(temporal_client, thread_id)  # answered after both signals were handled
    assert snap.status == "idle"
    history = await handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    assert kinds.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED) == 2
    assert listing_upserts(history) == []
    assert (await handle.describe()).typed_search_attributes.get(STATUS_ATTRIBUTE) == "idle"


async def test_a_long_tool_step_is_listed_running_by_a_timer(temporal_client: Client, agent_spec, agent_worker,
                                                             fake_model: FakeOpenAI):
    """A quick model call followed by a tool that runs past a second: no model call is in flight to ask for the
    listing, so the tool step's timer lists the thread running, for the rest of the second."""
    await agent_worker(agent_spec.model_copy(update={"tools": ["tests.tools_for_tests:slow_lookup"]}))
    thread_id = _thread(agent_spec)
    fake_model.enqueue(FakeResponse.tool_calls([("slow_lookup", {"key": "k", "seconds": 1.5})]))
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(),
                                                                              text="CALL_TOOL x"))
    assert reply.status == "completed"
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    kinds = [e.event_type for e in history.events]
    assert kinds.count(EventType.EVENT_TYPE_TIMER_STARTED) == kinds.count(EventType.EVENT_TYPE_TIMER_FIRED) == 1
    assert listing_upserts(history) == ["running", "idle"]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in kinds




async def test_a_sub_second_turn_leaves_the_listed_status_alone(temporal_client: Client, agent_spec, agent_worker):
    """Each status upsert is a visibility write on the server: a thread at rest is listed `running` only once its
    turn has run a second (LISTED_RUNNING_AFTER), so a quick turn writes none, starts no timer and leaves no journaled
    attempt."""
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    for text in ("one", "two"):
        reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=text))
        assert reply.text == f"echo: {text}"
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    kinds = [e.event_type for e in history.events]
    upserted = [set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
                for e in history.events if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES]
    # A new thread starts with every patch in force: no patch marker, so no `TemporalChangeVersion` upsert either.
    assert upserted == [] and marker_summaries(history, PATCH_MARKER) == []
    # Nor a timer, nor a signal: the listing would be asked for by a model call still in flight after a second.
    assert EventType.EVENT_TYPE_TIMER_STARTED not in kinds and EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in kinds
    described = await temporal_client.get_workflow_handle(thread_id).describe()
    assert described.typed_search_attributes.get(STATUS_ATTRIBUTE) == "idle"
    journal = attempt_journal(temporal_client).directory / f"{os.getpid()}+{process_start(os.getpid())}"
    assert running_attempts(journal.read_text()) == set()
    # Every workflow task names the build that ran it (the UI's "build id", a reset's bad-build filter).
    completed = [e.workflow_task_completed_event_attributes for e in history.events
                 if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
    assert {c.worker_version.build_id or c.binary_checksum for c in completed} == {code_build_id()}


async def test_an_instant_built_in_tool_runs_as_a_local_activity(temporal_client: Client, agent_spec, agent_worker,
                                                                fake_model: FakeOpenAI):
    """`current_time` runs inside the workflow task that asked for it: the Temporal UI shows it as a local activity
    marker with its summary, no activity task and no extra workflow task; its result is in the thread and the model's
    next call sees it. A tool that does I/O (`storage_read`) stays an activity of its own."""
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    fake_model.enqueue(FakeResponse.tool_calls([("current_time", {}), ("storage_read", {"path": "missing.txt"})]))
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(),
                                                                              text="CALL_TOOL x"))
    assert reply.status == "completed" and reply.text.startswith("tools done: 20")
    results = [i for i in store_items(agent_spec.room, thread_id) if i.type == "tool_result"]
    assert [r.tool_name for r in results] == ["current_time", "storage_read"]
    assert results[0].data == {"ok": True} and results[1].data == {"ok": False}
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    assert marker_summaries(history, LOCAL_ACTIVITY_MARKER) == [STORED_TRANSCRIPT_SUMMARY, "tool current_time"]
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    assert scheduled == ["call_model", "run_tool", "call_model"]
    await record_history(temporal_client.get_workflow_handle(thread_id), "local_tools")


async def test_a_tool_function_marked_local_runs_as_a_local_activity(temporal_client: Client, agent_spec,
                                                                     agent_worker, fake_model: FakeOpenAI):
    """`fn.local = True` makes a `--tool` function a local activity like `current_time`; its error still goes to the
    model as the tool's answer, once its attempts are spent, and the turn goes on."""
    await agent_worker(agent_spec.model_copy(update={"tools": ["tests.tools_for_tests:shout"]}))
    thread_id = _thread(agent_spec)
    fake_model.enqueue(FakeResponse.tool_calls([("shout", {"text": "hi"}), ("shout", {"text": ""})]))
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(),
                                                                              text="CALL_TOOL x"))
    assert reply.status == "completed", reply
    assert reply.text.startswith("tools done: HI | ") and "nothing to shout" in reply.text, reply.text
    results = [i for i in store_items(agent_spec.room, thread_id) if i.type == "tool_result"]
    assert [(r.tool_name, r.data) for r in results] == [("shout", {"ok": True}), ("shout", {"ok": False})]
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    assert sorted(marker_summaries(history, LOCAL_ACTIVITY_MARKER)) == [
        'tool shout {"text": ""}', 'tool shout {"text": "hi"}', STORED_TRANSCRIPT_SUMMARY]
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    assert scheduled == ["call_model", "call_model"]


async def test_a_turn_id_the_thread_forgot_is_answered_from_the_thread_store(
        temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI, monkeypatch):
    """A thread remembers its last SEEN_TURN_IDS turn ids; a redelivery older than that (a mail server's, a
    toolkit caller's) finds the turn's answer in the thread store, the durable record, and is not run again."""
    from threadline.workflows import thread as thread_workflow

    monkeypatch.setattr(thread_workflow, "SEEN_TURN_IDS", 2)
    monkeypatch.setattr(thread_workflow, "RECENT_REPLIES", 1)
    monkeypatch.setattr(thread_workflow, "REPLY_RETENTION_SECONDS", 0.0)
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    first = Turn(turn_id=new_turn_id(), text="pay invoice 42")
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, first)
    for n in range(3):
        await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=f"later {n}"))
    snapshot = await thread_snapshot(temporal_client, thread_id)
    assert first.turn_id not in [r.turn_id for r in snapshot.recent_replies]
    again = await submit_turn(temporal_client, agent_spec.ref, thread_id, first)
    assert (again.status, again.text) == ("completed", "echo: pay invoice 42") and again.text == reply.text
    assert fake_model.count() == 4
    items = store_items(agent_spec.room, thread_id)
    assert [i.type for i in items if i.turn_id == first.turn_id] == ["user", "assistant"]
