"""Failures around a thread: model errors and retries, a worker killed mid-turn, a Temporal server restart, and
continue-as-new after every turn."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client, WorkflowUpdateFailedError
from threadline.activities.model_provider import MAX_RETRY_AFTER_SECONDS, retry_delay
from threadline.activities.thread_store import ThreadStore
from threadline.channels.attempts import AttemptJournal, _StickyResets, attempt_journal, running_attempts
from threadline.channels.delivery import (
    connect,
    deliver_turn,
    new_thread_name,
    new_turn_id,
    submit_turn,
    thread_snapshot,
    wait_for_reply,
)
from threadline.channels.process_identity import local_process_is_gone, process_identity, process_key, process_start
from threadline.cli.connection import recover_dead_workers_meanwhile
from threadline.cli.options import ConnectionOptions
from threadline.models.limits import ErrorType
from threadline.models.spec import AgentSpec
from threadline.models.thread import ThreadItem, Turn
from threadline.worker import run_agent
from threadline.workflows.thread import CUT_AT_ROLLOVER, UPDATES_PER_RUN, ThreadWorkflow

from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.runtime_support import (
    CONTINUED_AS_NEW,
    LOCAL_ACTIVITY_MARKER,
    PATCH_MARKER,
    STORED_TRANSCRIPT_SUMMARY,
    Gate,
    event_types,
    eventually,
    items_of_turn,
    marker_summaries,
    payload_json,
    prompt_texts,
    record_history,
    runs_of,
    store_items,
)
from tests.temporal_server import TemporalDevServer


def _thread(spec: AgentSpec) -> str:
    return spec.ref.thread_id(new_thread_name())


def _gap(fake: FakeOpenAI) -> float:
    first, second = fake.requests[:2]
    return second.received_monotonic - first.received_monotonic


async def test_429_honours_retry_after(temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    # The workflow's own first retry comes after 1 s: a gap of 2.5 s can only come from the header.
    fake_model.enqueue(FakeResponse.error(429, headers={"Retry-After": "2.5"}))
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="hi"))
    assert reply.status == "completed" and reply.text == "echo: hi"
    assert fake_model.count() == 2 and 2.4 <= _gap(fake_model) < 6


async def test_429_honours_retry_after_ms(temporal_client: Client, agent_spec, agent_worker, fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    fake_model.enqueue(FakeResponse.error(429, headers={"retry-after-ms": "2200", "Retry-After": "30"}))
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="hi"))
    assert reply.status == "completed"
    assert fake_model.count() == 2 and 2.1 <= _gap(fake_model) < 6


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "-5"}, 0.0),
    ({"Retry-After": "1e9"}, MAX_RETRY_AFTER_SECONDS),
    ({"Retry-After": "nan"}, None),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ({"Retry-After": "Wed, 21 Oct 2999 07:28:00 GMT"}, MAX_RETRY_AFTER_SECONDS),
    ({"Retry-After": "Wed, 99 Foo 2015"}, None),
    ({"retry-after-ms": "abc", "Retry-After": "3"}, 3.0),
    ({"retry-after-ms": "-1"}, 0.0),
])
def test_retry_after_is_parsed_and_clamped(headers: dict[str, str], seconds: float | None) -> None:
    delay = retry_delay(httpx.Headers(headers))
    assert (None if delay is None else delay.total_seconds()) == seconds


async def test_an_unreadable_retry_after_falls_back_to_temporal_backoff(temporal_client: Client, agent_spec,
                                                                        agent_worker, fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    fake_model.enqueue(FakeResponse.error(429, headers={"Retry-After": "soon"}))
    reply = await submit_turn(temporal_client, agent_spec.ref, _thread(agent_spec), Turn(turn_id=new_turn_id(),
                                                                                          text="hi"))
    assert reply.status == "completed" and reply.text == "echo: hi"
    assert fake_model.count() == 2 and 0.9 <= _gap(fake_model) < 5


async def test_a_stream_without_a_finish_reason_is_asked_again(temporal_client: Client, agent_spec, agent_worker,
                                                               fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    fake_model.enqueue(FakeResponse.text("half an answ", omit_finish_reason=True), FakeResponse.text("whole answer"))
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="hi"))
    assert reply.status == "completed" and reply.text == "whole answer"
    assert fake_model.count() == 2


async def test_an_answer_cut_off_at_the_output_limit_says_so(temporal_client: Client, agent_spec, agent_worker,
                                                             fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    fake_model.enqueue(FakeResponse.text("the first half", finish_reason="length"))
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="hi"))
    assert reply.status == "completed"
    assert reply.text == "the first half\n\n[the answer was cut off at the model's output limit]"
    answer = items_of_turn(agent_spec.room, thread_id, reply.turn_id)[-1]
    assert answer.type == "assistant" and answer.text == reply.text

    fake_model.enqueue(FakeResponse.tool_calls([("current_time", {})], finish_reason="length"))
    cut = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="time?"))
    assert cut.status == "failed"
    assert cut.error.startswith("model fake-model reached its output limit in the middle of a tool call")
    assert fake_model.count() == 2, "a cut-off tool call is not run and not retried"


async def test_500_is_retried(temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    fake_model.enqueue(FakeResponse.error(500), FakeResponse.drop())
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="hi"))
    assert reply.status == "completed" and reply.text == "echo: hi"
    assert fake_model.count() == 3
    turn_items = items_of_turn(agent_spec.room, thread_id, reply.turn_id)
    assert [i.type for i in turn_items] == ["user", "assistant"]


async def test_400_fails_the_turn_and_the_thread_recovers(temporal_client: Client, agent_spec, agent_worker,
                                                           fake_model):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    fake_model.enqueue(FakeResponse.error(400, message="Invalid value for 'messages': too many cats"))
    failed = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="cats"))
    assert failed.status == "failed"
    assert failed.error == "model fake-model answered HTTP 400: Invalid value for 'messages': too many cats"
    assert fake_model.count() == 1, "a 400 must not be retried"
    items = items_of_turn(agent_spec.room, thread_id, failed.turn_id)
    assert [(i.type, i.text) for i in items] == [("user", "cats"), ("error", failed.error)]
    snap = await thread_snapshot(temporal_client, thread_id)
    assert snap.status == "failed" and snap.last_error == failed.error
    info = ThreadStore.for_room(agent_spec.room).thread(thread_id)
    assert info is not None and info.status == "failed"

    after = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="dogs"))
    assert after.status == "completed" and after.text == "echo: dogs"
    assert prompt_texts(fake_model.requests[-1]) == [("user", "cats"), ("user", "dogs")]
    assert (await thread_snapshot(temporal_client, thread_id)).status == "idle"
    await record_history(temporal_client.get_workflow_handle(thread_id), "model_failure")


async def _kill_mid_turn(client: Client, spec: AgentSpec, agent_process, fake_model: FakeOpenAI, text: str):
    """Starts an agent process, submits a turn and kills the process with its model call in flight: the thread id,
    the dead process, the turn and the task that waits for its reply."""
    thread_id = _thread(spec)
    first_process = agent_process(spec)
    gate = Gate()
    fake_model.enqueue(gate.response(FakeResponse.text("answer from the dead worker")))
    turn = Turn(turn_id=new_turn_id(), text=text)
    call = asyncio.create_task(submit_turn(client, spec.ref, thread_id, turn))
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    # Killed once the thread is listed as running: the workflow task of that listing, due a second into the turn,
    # would otherwise reach the dead worker's sticky queue before any new process is up, and wait out its timeout.
    listed_running = f"WorkflowId = '{thread_id}' AND ThreadlineStatus = 'running'"
    await eventually(lambda: _count(client, listed_running), what="the thread listed as running")
    first_process.kill()
    gate.release()  # the dead worker's request is answered into a closed connection
    return thread_id, first_process, turn, call


async def test_worker_killed_mid_turn(temporal_client: Client, agent_spec, agent_process, fake_model: FakeOpenAI):
    """kill -9 of the agent process while the model call is in flight: a new process finishes the turn, once,
    without waiting for the dead worker's sticky queue to time out (the new process moved the thread off it), and
    without waiting for the model call's heartbeat timeout (the new process failed the dead worker's attempt)."""
    thread_id, first_process, turn, call = await _kill_mid_turn(
        temporal_client, agent_spec, agent_process, fake_model, "survive this")
    agent_process(agent_spec)
    reply = await asyncio.wait_for(call, 60)
    assert reply.status == "completed" and reply.text == "echo: survive this"
    assert fake_model.count() == 2
    items = items_of_turn(agent_spec.room, thread_id, turn.turn_id)
    assert [(i.type, i.text) for i in items] == [("user", "survive this"), ("assistant", "echo: survive this")]
    snap = await thread_snapshot(temporal_client, thread_id)
    assert snap.turns_completed == 1 and snap.queued_turn_ids == []
    again = await submit_turn(temporal_client, agent_spec.ref, thread_id, turn)
    assert again == reply and fake_model.count() == 2
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    timeouts = [e.workflow_task_timed_out_event_attributes.timeout_type for e in history.events
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT]
    assert TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START not in timeouts
    model_attempts = [e.activity_task_started_event_attributes for e in history.events
                      if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert [a.attempt for a in model_attempts] == [2]
    failure = model_attempts[0].last_failure
    assert failure.application_failure_info.type == ErrorType.WORKER_GONE
    assert f"({first_process.proc.pid}@" in failure.message


async def test_a_starting_process_fails_the_dead_workers_attempts_before_its_worker_polls(
        temporal_server: TemporalDevServer, temporal_client: Client, agent_spec, agent_process, fake_model: FakeOpenAI):
    """`process join` recovers on a thread of its own while its start-up checks run (cli/connection.py): the dead
    worker's attempt is failed with no worker of the new process polling yet, its journal is gone, and the turn then
    completes once on the new worker."""
    thread_id, first_process, turn, call = await _kill_mid_turn(
        temporal_client, agent_spec, agent_process, fake_model, "recover me early")
    assert attempt_journal(temporal_client).of_dead_processes()

    recovering = recover_dead_workers_meanwhile(ConnectionOptions(temporal_address=temporal_server.address))
    await asyncio.to_thread(recovering.join, 30)
    assert not recovering.is_alive()
    [attempt] = (await temporal_client.get_workflow_handle(thread_id).describe()).raw_description.pending_activities
    assert attempt.attempt == 2
    assert attempt.last_failure.application_failure_info.type == ErrorType.WORKER_GONE
    assert f"({first_process.proc.pid}@" in attempt.last_failure.message
    assert not attempt_journal(temporal_client).of_dead_processes()

    agent_process(agent_spec)
    reply = await asyncio.wait_for(call, 60)
    assert reply.status == "completed" and reply.text == "echo: recover me early"
    assert fake_model.count() == 2
    items = items_of_turn(agent_spec.room, thread_id, turn.turn_id)
    assert [(i.type, i.text) for i in items] == [("user", "recover me early"), ("assistant", "echo: recover me early")]


async def test_temporal_server_restart_loses_nothing(temporal_server: TemporalDevServer, temporal_client: Client,
                                                     agent_spec, agent_worker, fake_model: FakeOpenAI):
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    before = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="one"))
    gate = Gate()
    fake_model.enqueue(gate.response())
    during = Turn(turn_id=new_turn_id(), text="two")
    await deliver_turn(temporal_client, agent_spec.ref, thread_id, during)
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    await temporal_server.arestart()
    gate.release()
    during_reply = await asyncio.wait_for(wait_for_reply(temporal_client, thread_id, during.turn_id), 60)
    after = await asyncio.wait_for(
        submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="three")), 60
    )
    assert [r.status for r in (before, during_reply, after)] == ["completed"] * 3
    assert prompt_texts(fake_model.requests[-1]) == [
        ("user", "one"), ("assistant", "echo: one"), ("user", "two"), ("assistant", "echo: two"), ("user", "three"),
    ]
    assert [i.type for i in store_items(agent_spec.room, thread_id)] == ["user", "assistant"] * 3
    assert (await thread_snapshot(temporal_client, thread_id)).turns_completed == 3




@pytest.fixture
async def rollover(rollover_server: TemporalDevServer, agent_spec):  # noqa: ANN201
    client = await connect(rollover_server.address)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_agent(client, agent_spec, stop, ready))
    await asyncio.wait_for(ready.wait(), 30)
    yield client
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_continue_as_new_when_temporal_suggests_it(rollover: Client, agent_spec, fake_model):
    temporal_client = rollover
    thread_id = _thread(agent_spec)
    turns = [Turn(turn_id=new_turn_id(), text=f"turn {n}") for n in range(5)]
    replies = [await submit_turn(temporal_client, agent_spec.ref, thread_id, t) for t in turns]
    assert [r.text for r in replies] == [f"echo: turn {n}" for n in range(5)]
    expected = []
    for n in range(4):
        expected += [("user", f"turn {n}"), ("assistant", f"echo: turn {n}")]
    assert prompt_texts(fake_model.requests[-1]) == [*expected, ("user", "turn 4")]
    items = store_items(agent_spec.room, thread_id)
    assert [(i.turn_id, i.type) for i in items] == [(t.turn_id, kind) for t in turns for kind in ("user", "assistant")]

    async def rolled_over():
        runs = await runs_of(temporal_client, thread_id)
        return runs if len(runs) >= 5 else None

    runs = await eventually(rolled_over, what="a run per turn (Temporal suggests a rollover after every turn)")
    for run_id in runs:
        history = await temporal_client.get_workflow_handle(thread_id, run_id=run_id).fetch_history()
        assert run_id == runs[-1] or event_types(history)[-1] == CONTINUED_AS_NEW
        # Each run starts with every workflow patch in force: none pays for a patch marker.
        assert marker_summaries(history, PATCH_MARKER) == []
        # Only the first run starts with no transcript: it asks the store where the transcript ends, the others know.
        assert marker_summaries(history, LOCAL_ACTIVITY_MARKER) == (
            [STORED_TRANSCRIPT_SUMMARY] if run_id == runs[0] else [])
    first_run = temporal_client.get_workflow_handle(thread_id, run_id=runs[0])
    await record_history(first_run, "continue_as_new")

    # State crossed every rollover: a duplicate of the first turn is still recognised, usage adds up.
    again = await submit_turn(temporal_client, agent_spec.ref, thread_id, turns[0])
    assert again == replies[0] and fake_model.count() == 5
    snap = await thread_snapshot(temporal_client, thread_id)
    assert snap.turns_completed == 5
    assert snap.usage.model_calls == 5


async def test_signal_queued_turn_survives_continue_as_new(rollover: Client, agent_spec, fake_model):
    temporal_client = rollover
    thread_id = _thread(agent_spec)
    gate = Gate()
    fake_model.enqueue(gate.response())
    first, second = Turn(turn_id=new_turn_id(), text="first"), Turn(turn_id=new_turn_id(), text="second")
    await deliver_turn(temporal_client, agent_spec.ref, thread_id, first)
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    await deliver_turn(temporal_client, agent_spec.ref, thread_id, second)
    await eventually(lambda: _queued(temporal_client, thread_id), what="second turn queued")
    gate.release()
    reply = await asyncio.wait_for(wait_for_reply(temporal_client, thread_id, second.turn_id), 30)
    assert reply.status == "completed" and reply.text == "echo: second"
    runs = await runs_of(temporal_client, thread_id)
    assert len(runs) >= 2
    history = await temporal_client.get_workflow_handle(thread_id, run_id=runs[0]).fetch_history()
    assert event_types(history)[-1] == CONTINUED_AS_NEW
    [carried] = payload_json(history.events[-1].workflow_execution_continued_as_new_event_attributes.input)
    assert [t["turn_id"] for t in carried["state"]["queue"]] == [second.turn_id]
    assert prompt_texts(fake_model.requests[-1]) == [("user", "first"), ("assistant", "echo: first"),
                                                     ("user", "second")]
    assert [i.type for i in store_items(agent_spec.room, thread_id)] == ["user", "assistant"] * 2
    assert fake_model.count() == 2


async def test_a_flood_of_updates_rolls_the_thread_over_and_loses_no_turn(temporal_client: Client, agent_spec,
                                                                          agent_worker, fake_model):
    """Updates keep a run alive (the run waits for its handlers before it rolls over), so once a rollover is due,
    by Temporal's suggestion (4,096 history events on the dev server) or at UPDATES_PER_RUN, the thread turns new
    updates away to the signal path; the next turn, delivered that way, rolls the thread over and gets its reply."""
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    first = Turn(turn_id=new_turn_id(), text="first")
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, first)
    handle = temporal_client.get_workflow_handle(thread_id)
    refused = 0

    async def resend(worker: int, times: int) -> None:
        # The same turn under new update ids (Temporal dedupes an update id): each is one update, answered from
        # the kept reply without a model call, until the thread turns them away.
        nonlocal refused
        for n in range(times):
            try:
                assert await handle.execute_update(ThreadWorkflow.submit_turn, first, id=f"{worker}-{n}") == reply
            except WorkflowUpdateFailedError as e:
                assert e.cause.type == ErrorType.THREAD_ROLLING_OVER
                refused += 1

    await asyncio.gather(*(resend(w, UPDATES_PER_RUN // 6 + 5) for w in range(6)))
    assert refused > 0
    after = await asyncio.wait_for(
        submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="after")), 60)
    assert after.status == "completed" and after.text == "echo: after"
    runs = await runs_of(temporal_client, thread_id)
    assert len(runs) == 2
    history = await temporal_client.get_workflow_handle(thread_id, run_id=runs[0]).fetch_history()
    assert event_types(history)[-1] == CONTINUED_AS_NEW
    accepted = sum(1 for e in history.events if e.HasField("workflow_execution_update_accepted_event_attributes"))
    assert accepted + refused == 1 + 6 * (UPDATES_PER_RUN // 6 + 5) and accepted <= UPDATES_PER_RUN
    assert fake_model.count() == 2
    again = await submit_turn(temporal_client, agent_spec.ref, thread_id, first)  # the id crossed the rollover
    assert again == reply and fake_model.count() == 2


async def _queued(client: Client, thread_id: str) -> bool:
    return bool((await thread_snapshot(client, thread_id)).queued_turn_ids)


async def test_many_large_queued_turns_and_long_replies_roll_over(rollover: Client, agent_spec, fake_model):
    client, ref = rollover, agent_spec.ref
    thread_id = _thread(agent_spec)
    long_reply = "x" * (100 * 1024)
    fake_model.script(lambda req: FakeResponse.text(req.last_user_text[:8] + " " + long_reply))
    gate = Gate()
    fake_model.enqueue(gate.response())
    first = Turn(turn_id=new_turn_id(), text="first")
    await deliver_turn(client, ref, thread_id, first)
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    queued = [Turn(turn_id=new_turn_id(), text=f"job {n:02d} " + "y" * (100 * 1024)) for n in range(50)]
    for turn in queued:
        await deliver_turn(client, ref, thread_id, turn)
    gate.release()
    replies = [await wait_for_reply(client, thread_id, t.turn_id, timeout=120) for t in queued]
    completed = [r for r in replies if r.status == "completed"]
    refused = [r for r in replies if r.status == "failed"]
    # 1 MiB of waiting text holds ten of these turns; the others are answered at once, saying why.
    assert len(completed) == 10 and len(refused) == 40
    assert [r.turn_id for r in completed] == [t.turn_id for t in queued[:10]]
    assert [r.text[:6] for r in completed] == [f"job {n:02d}" for n in range(10)], [r.text[:40] for r in completed]
    # Replies that crossed a rollover after newer ones may be cut there; the thread store has every one whole.
    whole = {i.turn_id: i.text for i in store_items(agent_spec.room, thread_id) if i.type == "assistant"}
    for reply in completed:
        assert whole[reply.turn_id].endswith(long_reply)
        assert reply.text == whole[reply.turn_id] or reply.text.endswith(CUT_AT_ROLLOVER)
    assert completed[-1].text == whole[completed[-1].turn_id]
    assert all("turns waiting" in r.error and "the limit is 1,048,576" in r.error for r in refused), refused[0].error
    runs = await runs_of(client, thread_id)
    assert len(runs) >= 3, "the thread did not roll over"
    after = await submit_turn(client, ref, thread_id, Turn(turn_id=new_turn_id(), text="still there?"))
    assert after.status == "completed" and after.text.startswith("still th")
    assert (await thread_snapshot(client, thread_id)).turns_completed == 12


async def test_a_turn_refused_for_the_queue_size_is_recorded_as_an_error(temporal_client: Client, agent_spec,
                                                                         agent_worker, fake_model):
    """A turn that would take the waiting text past MAX_QUEUED_BYTES fails at once, and the thread store says why
    (readers of the thread, the chat feed among them, see the turn end failed), without the turn's text."""
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    gate = Gate()
    fake_model.script(lambda req: gate.response(FakeResponse.text("first done")) if req.last_user_text == "first"
                      else FakeResponse.text("done"))
    first = Turn(turn_id=new_turn_id(), text="first")
    await deliver_turn(temporal_client, agent_spec.ref, thread_id, first)
    await fake_model.wait_for_async(lambda: fake_model.in_flight == 1)
    queued = [Turn(turn_id=new_turn_id(), text=f"{n} " + "y" * 262_000) for n in range(4)]
    refused = Turn(turn_id=new_turn_id(), text="one more " + "z" * 1000)
    for turn in [*queued, refused]:
        await deliver_turn(temporal_client, agent_spec.ref, thread_id, turn)
    reply = await wait_for_reply(temporal_client, thread_id, refused.turn_id, timeout=30)
    assert reply.status == "failed" and "the thread already has 4 turns waiting" in reply.error
    errors = await eventually(lambda: [i for i in items_of_turn(agent_spec.room, thread_id, refused.turn_id)], 30,
                              what="the refusal in the thread store")
    assert [(i.type, i.text) for i in errors] == [("error", f"the turn was not run: {reply.error}")]
    gate.release()
    replies = [await wait_for_reply(temporal_client, thread_id, t.turn_id, timeout=60) for t in [first, *queued]]
    assert [r.text for r in replies] == ["first done"] + ["done"] * 4
    # The refusal's seq comes after the answer's that the running turn's model call had taken.
    assert [i.type for i in store_items(agent_spec.room, thread_id)] == [
        "user", "assistant", "error", *["user", "assistant"] * 4]
    await record_history(temporal_client.get_workflow_handle(thread_id), "refused_turn")


async def test_a_turn_refused_before_the_stored_transcript_is_found_is_numbered_after_it(
        temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI):
    """Turns that reach a thread whose workflow is gone all at once (here before any worker polls, so they come in
    the new run's first task) and take the waiting text past MAX_QUEUED_BYTES: the refusal's error item comes after
    the stored transcript, not over its first item."""
    thread_id = _thread(agent_spec)
    room, _, _ = thread_id.partition("/")
    ThreadStore.for_room(agent_spec.room).append(thread_id, [
        ThreadItem(seq=1, turn_id="before", type="user", text="one"),
        ThreadItem(seq=2, turn_id="before", type="assistant", text="echo: one"),
    ], room=room, agent=agent_spec.agent_name)
    admitted = [Turn(turn_id=new_turn_id(), text=f"{n} " + "y" * 262_000) for n in range(4)]
    refused = Turn(turn_id=new_turn_id(), text="one more " + "z" * 1000)
    for turn in [*admitted, refused]:
        await deliver_turn(temporal_client, agent_spec.ref, thread_id, turn)
    await agent_worker(agent_spec)
    reply = await wait_for_reply(temporal_client, thread_id, refused.turn_id, timeout=30)
    assert reply.status == "failed" and "the thread already has 4 turns waiting" in reply.error
    for turn in admitted:
        assert (await wait_for_reply(temporal_client, thread_id, turn.turn_id, timeout=60)).status == "completed"
    await eventually(lambda: items_of_turn(agent_spec.room, thread_id, refused.turn_id), 30,
                     what="the refusal in the thread store")
    items = store_items(agent_spec.room, thread_id)
    assert [i.seq for i in items] == list(range(1, 12))
    assert [(i.turn_id, i.type, i.text) for i in items[:2]] == [("before", "user", "one"),
                                                                 ("before", "assistant", "echo: one")]
    assert [i.type for i in items if i.turn_id == refused.turn_id] == ["error"]
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    assert marker_summaries(history, PATCH_MARKER) == []
    await record_history(temporal_client.get_workflow_handle(thread_id), "refused_before_opening")


def test_only_an_exited_process_of_this_host_counts_as_a_gone_worker():
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        assert local_process_is_gone(f"{exited.pid}@{host}")
        assert not local_process_is_gone(f"{alive.pid}@{host}")
        assert not local_process_is_gone(f"{os.getpid()}@{host}")  # another agent of this very process
        assert not local_process_is_gone(f"{exited.pid}@another-{host}")
        assert not local_process_is_gone("my-worker")
        started = process_start(alive.pid)
        assert started and not local_process_is_gone(f"{alive.pid}@{host}+{started}")
        assert process_identity() == f"{os.getpid()}@{host}+{process_start(os.getpid())}"
        assert not local_process_is_gone(process_identity())
        # An agent container restarted in place runs as the same pid on the same host: the start time differs.
        assert local_process_is_gone(f"{alive.pid}@{host}+{int(started) - 1}")
        assert local_process_is_gone(f"{os.getpid()}@{host}+{int(process_start(os.getpid())) - 1}")
    finally:
        alive.kill()
        alive.wait()


def test_the_journal_of_an_earlier_process_with_this_very_pid_counts_as_dead(tmp_path: Path):
    """An agent container restarted in place is pid 1 again: its predecessor's journal is still recovered, and so is
    the journal an older version left (a directory with a file per attempt)."""
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    own_start = int(process_start(os.getpid()))
    journal = AttemptJournal(tmp_path)
    for name, workflow_id in ((f"{os.getpid()}+{own_start - 1}", "predecessor"),
                              (f"{os.getpid()}+{own_start}", "this process")):
        (tmp_path / name).write_text(f"+0 {json.dumps([workflow_id, 'run'])}\n+1 [\"ended\", \"run\"]\n-1\n")
    (tmp_path / str(exited.pid)).mkdir()
    (tmp_path / str(exited.pid) / "0").write_text(json.dumps(["older code", "run"]))
    dead = journal.of_dead_processes()
    assert {d.name: ids for d, ids in dead.items()} == {
        f"{os.getpid()}+{own_start - 1}": {("predecessor", "run")}, str(exited.pid): {("older code", "run")}}


def test_a_journal_holds_the_attempts_started_and_not_ended_and_stays_small(tmp_path: Path):
    journal = AttemptJournal(tmp_path, compact_after=4)
    entries = [journal.started(SimpleNamespace(workflow_id=f"thread {n}", workflow_run_id=f"run-{n}"))
               for n in range(10)]
    for entry in entries[:8]:
        journal.ended(entry)
    own = tmp_path / process_key()
    assert running_attempts(own.read_text()) == {("thread 8", "run-8"), ("thread 9", "run-9")}
    assert len(own.read_text().splitlines()) <= 4 and list(tmp_path.iterdir()) == [own]
    with own.open("a") as cut_short:  # a kill in the middle of a line
        cut_short.write('+10 ["thread 10", "ru')
    assert running_attempts(own.read_text()) == {("thread 8", "run-8"), ("thread 9", "run-9")}


async def _count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def test_recovery_moves_a_parent_of_several_cut_off_children_off_the_sticky_queue_once(temporal_client: Client):
    """Two children of one thread cut off by the same kill share their parent: it is reset (and counted) once."""
    handles = [await temporal_client.start_workflow("ParkedWorkflow", id=f"parked-{n}-{new_turn_id()}",
                                                    task_queue=f"nobody-{new_turn_id()}") for n in range(2)]
    try:
        executions = [WorkflowExecution(workflow_id=h.id, run_id=h.result_run_id) for h in handles]
        sticky = _StickyResets(temporal_client)
        await asyncio.gather(*(sticky.reset(e) for e in [executions[0], executions[0], executions[1]]))
        assert sticky.done() == 2
    finally:
        for handle in handles:
            await handle.terminate()


async def test_a_thread_whose_workflow_was_terminated_goes_on_after_its_stored_transcript(
        temporal_client: Client, agent_spec, agent_worker, fake_model: FakeOpenAI):
    """Ops terminate a thread's workflow in the Temporal UI (or the agent moves to a new Temporal server): the next
    turn starts a new run, which continues the transcript in the thread store instead of writing over it from seq 1.
    The model sees the whole conversation, and a turn answered before the termination is answered from the store."""
    await agent_worker(agent_spec)
    thread_id = _thread(agent_spec)
    turns = [Turn(turn_id=new_turn_id(), text=text) for text in ("one", "two")]
    replies = [await submit_turn(temporal_client, agent_spec.ref, thread_id, t) for t in turns]
    await temporal_client.get_workflow_handle(thread_id).terminate(reason="ops")
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="three"))
    assert reply.status == "completed" and reply.text == "echo: three"
    assert prompt_texts(fake_model.requests[-1]) == [
        ("user", "one"), ("assistant", "echo: one"), ("user", "two"), ("assistant", "echo: two"), ("user", "three")]
    items = store_items(agent_spec.room, thread_id)
    assert [(i.seq, i.text) for i in items] == [
        (1, "one"), (2, "echo: one"), (3, "two"), (4, "echo: two"), (5, "three"), (6, "echo: three")]
    again = await submit_turn(temporal_client, agent_spec.ref, thread_id, turns[0])
    assert again.text == replies[0].text and fake_model.count() == 3
    assert len(store_items(agent_spec.room, thread_id)) == 6
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    assert marker_summaries(history, LOCAL_ACTIVITY_MARKER) == [STORED_TRANSCRIPT_SUMMARY]
    assert marker_summaries(history, PATCH_MARKER) == []
    await record_history(temporal_client.get_workflow_handle(thread_id), "stored_transcript")
