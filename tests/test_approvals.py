"""A person approves dangerous tool calls: the turn waits in its thread's workflow (status `waiting`, no activity
running), the first decision wins, an approved call runs once (a ledger file counts its lines), a denial is the
tool's result for the model. Decided through the HTTP API, the CLI, and a timeout; workers killed while waiting
and right after the decision."""

from __future__ import annotations

import asyncio
import json

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from threadline.activities.thread_store import ThreadStore
from threadline.channels.approvals import decide_approval, thread_approvals, waiting_approvals
from threadline.channels.delivery import connect, new_thread_name, new_turn_id, submit_turn, thread_snapshot
from threadline.models.spec import AgentSpec, ApprovalSettings
from threadline.models.thread import ApprovalDecision, Turn
from threadline.models.thread import thread_of_approval as thread_of
from threadline.workflows.search_attributes import STATUS_ATTRIBUTE

from tests.chat_http_support import chat_server
from tests.cli_helpers import run_cli
from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse
from tests.runtime_support import eventually, payload_json, record_history, running_agent, runs_of, store_items
from tests.tools_for_tests import ledger_lines

TOOLS = ["tests.tools_for_tests:append_line", "tests.tools_for_tests:note_line"]


def tools_done(request: FakeRequest) -> FakeResponse | None:
    """After tool results, the model says what they were."""
    if request.messages[-1]["role"] != "tool":
        return None
    return FakeResponse.text("tools done: " + " | ".join(r["content"] for r in request.tool_results))


def _spec(room: str, **approvals: object) -> AgentSpec:
    return AgentSpec(room=room, agent_name="support", model="fake-model", tools=TOOLS,
                     approvals=ApprovalSettings(**approvals))


async def _pending(client: Client, thread_id: str, count: int = 1):
    return await eventually(lambda: _at_least(client, thread_id, count), timeout=30, what=f"{count} approvals")


async def _at_least(client: Client, thread_id: str, count: int):
    pending = await thread_approvals(client, thread_id)
    return pending if len(pending) >= count else None


async def test_approve_over_http_runs_the_call_once_and_a_second_decision_changes_nothing(
        temporal_client: Client, room: str, fake_model: FakeOpenAI):
    spec = _spec(room)
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "refund 40 EUR"})]))
    async with chat_server(temporal_client, spec) as server:
        thread_id = spec.ref.thread_id(new_thread_name())
        turn = asyncio.create_task(submit_turn(temporal_client, spec.ref, thread_id,
                                               Turn(turn_id=new_turn_id(), text="refund please")))
        [request] = await _pending(temporal_client, thread_id)
        assert (request.tool, json.loads(request.arguments)) == ("append_line", {"line": "refund 40 EUR"})
        # Waiting costs nothing: no activity runs, the status says why, for the UI and the store.
        assert (await thread_snapshot(temporal_client, thread_id)).status == "waiting"
        described = await temporal_client.get_workflow_handle(thread_id).describe()
        assert described.raw_description.pending_activities == []
        assert described.typed_search_attributes.get(STATUS_ATTRIBUTE) == "waiting"
        assert ThreadStore.for_room(room).thread(thread_id).status == "waiting"
        assert [r.approval_id for r in await waiting_approvals(temporal_client, room)] == [request.approval_id]
        assert ledger_lines() == []
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            listed = (await http.get(f"/api/threads/{thread_id}/approvals")).json()
            assert [a["approval_id"] for a in listed["approvals"]] == [request.approval_id]
            wrong = await http.post(f"/api/approvals/{request.approval_id}",
                                    json={"decision": "approve", "by": "ann", "digest": "0" * 16})
            assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "mismatch"
            ok = await http.post(f"/api/approvals/{request.approval_id}",
                                 json={"decision": "approve", "by": "ann", "digest": request.digest})
            assert ok.status_code == 200, ok.text
            assert (ok.json()["approved"], ok.json()["by"], ok.json()["via"]) == (True, "ann", "api")
            again = await http.post(f"/api/approvals/{request.approval_id}", json={"decision": "deny", "by": "bob"})
            assert again.status_code == 409
            assert again.json()["error"]["message"].startswith("already decided: approved by ann (api) at ")
            unknown = await http.post(f"/api/approvals/{thread_id}:999", json={"decision": "approve"})
            assert unknown.status_code == 404
        reply = await asyncio.wait_for(turn, 30)
    assert reply.status == "completed" and reply.text == "tools done: appended 'refund 40 EUR'"
    assert [line.split(" ", 1)[1] for line in ledger_lines()] == ["refund 40 EUR"]
    approvals = [i for i in store_items(room, thread_id) if i.type == "approval"]
    assert [i.data["state"] for i in approvals] == ["pending", "approved"]
    assert {k: approvals[1].data[k] for k in ("by", "via", "digest", "approval_id")} == {
        "by": "ann", "via": "api", "digest": request.digest, "approval_id": request.approval_id}
    assert ThreadStore.for_room(room).thread(thread_id).status == "idle"
    messages = run_cli("process", "messages", "--room", room, "--thread-id", thread_id)
    assert "approved by ann (api)" in messages.stdout
    await record_history(temporal_client.get_workflow_handle(thread_id), "approval")


async def test_parallel_calls_wait_for_their_own_decisions_from_the_cli(
        temporal_client: Client, temporal_server, room: str, agent_worker, fake_model: FakeOpenAI):
    spec = _spec(room, require=["note_*"])
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "ship it"}), ("note_line", {"line": "x"})]))
    turn = asyncio.create_task(submit_turn(temporal_client, spec.ref, thread_id,
                                           Turn(turn_id=new_turn_id(), text="do both")))
    pending = await _pending(temporal_client, thread_id, 2)
    by_tool = {p.tool: p.approval_id for p in pending}
    address = ["--temporal-address", temporal_server.address]
    listed = await asyncio.to_thread(run_cli, "process", "approvals", "--room", room, "-o", "json", *address)
    assert listed.returncode == 0, listed.stderr
    assert sorted(a["tool"] for a in json.loads(listed.stdout)) == ["append_line", "note_line"]
    denied = await asyncio.to_thread(run_cli, "process", "deny", by_tool["note_line"], "--reason", "not today", "--by", "bob", *address)
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout.startswith("denied by bob (cli) at ")
    assert (await thread_snapshot(temporal_client, thread_id)).status == "waiting"  # the other still waits
    approved = await asyncio.to_thread(run_cli, "process", "approve", by_tool["append_line"], "--by", "ann", *address)
    assert approved.returncode == 0, approved.stderr
    twice = await asyncio.to_thread(run_cli, "process", "approve", by_tool["append_line"], *address)
    assert twice.returncode == 1 and "already decided: approved by ann (cli)" in twice.stderr
    reply = await asyncio.wait_for(turn, 30)
    assert reply.text == "tools done: appended 'ship it' | denied by bob: not today"
    assert len(ledger_lines()) == 1
    bad = await asyncio.to_thread(run_cli, "process", "approve", f"{thread_id}:12345", *address)
    assert bad.returncode == 2 and f"no approval {thread_id}:12345 is waiting" in bad.stderr


async def test_an_unanswered_request_is_denied_at_the_timeout(temporal_client: Client, room: str, agent_worker,
                                                              fake_model: FakeOpenAI):
    spec = _spec(room, timeout_seconds=2)
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "late"})]))
    reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="go"))
    assert reply.text == "tools done: denied by timeout: no decision within 2 s"
    assert ledger_lines() == []
    assert [i.data["state"] for i in store_items(room, thread_id) if i.type == "approval"] == ["pending", "denied"]


async def test_workers_killed_while_waiting_and_after_the_decision_run_the_call_once(
        temporal_client: Client, room: str, agent_process, fake_model: FakeOpenAI):
    spec = _spec(room)
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "exactly once", "seconds": 1.0})]))
    first = agent_process(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    turn = asyncio.create_task(submit_turn(temporal_client, spec.ref, thread_id,
                                           Turn(turn_id=new_turn_id(), text="once")))
    [request] = await _pending(temporal_client, thread_id)
    first.kill()
    second = agent_process(spec)
    outcome = await decide_approval(temporal_client, ApprovalDecision(
        approval_id=request.approval_id, approve=True, by="ann", via="api"))
    assert outcome.approved and not outcome.already_decided
    second.kill()  # right after the decision: the call is scheduled, perhaps started (it takes 1 s)
    agent_process(spec)
    reply = await asyncio.wait_for(turn, 90)
    assert reply.status == "completed" and reply.text.startswith("tools done: ")
    assert [line.split(" ", 1)[1] for line in ledger_lines()] == ["exactly once"]
    assert [i.data["state"] for i in store_items(room, thread_id) if i.type == "approval"] == ["pending", "approved"]


async def test_a_queue_job_shows_what_it_waits_for(temporal_client: Client, room: str, agent_worker,
                                                   fake_model: FakeOpenAI):
    from threadline.channels.queue import QueueChannel
    from threadline.channels.queue_jobs import job_status, send_job, wait_for_job

    spec = _spec(room)
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "nightly"})]))
    await agent_worker(spec, [QueueChannel("jobs")], own_client=True)
    accepted = await send_job(temporal_client, room, "jobs", {"prompt": "run the nightly entry"})
    waiting = await eventually(lambda: _job_waiting(temporal_client, room, accepted.job_id), timeout=30,
                               what="the job waits for an approval")
    [approval_id] = waiting.waiting_for
    assert waiting.thread_id == thread_of(approval_id)
    await decide_approval(temporal_client, ApprovalDecision(approval_id=approval_id, approve=True, by="ops",
                                                            via="api"))
    job = await asyncio.wait_for(wait_for_job(temporal_client, room, accepted.job_id), 30)
    assert (job.status, job.text) == ("completed", "tools done: appended 'nightly'")
    assert (await job_status(temporal_client, room, accepted.job_id)).waiting_for == []


async def _job_waiting(client: Client, room: str, job_id: str):
    from threadline.channels.queue_jobs import job_status

    status = await job_status(client, room, job_id)
    return status if status.status == "waiting_approval" else None


async def test_a_waiting_turn_survives_a_temporal_server_restart(temporal_server, temporal_client: Client, room: str,
                                                                agent_worker, fake_model: FakeOpenAI):
    from threadline.channels.delivery import deliver_turn, wait_for_reply

    spec = _spec(room)
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "after the restart"})]))
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    turn = Turn(turn_id=new_turn_id(), text="go")
    await deliver_turn(temporal_client, spec.ref, thread_id, turn)
    [request] = await _pending(temporal_client, thread_id)
    await temporal_server.arestart()
    [still] = await _pending(temporal_client, thread_id)
    assert still == request
    await decide_approval(temporal_client, ApprovalDecision(approval_id=request.approval_id, approve=True, by="ann",
                                                            via="api"))
    reply = await asyncio.wait_for(wait_for_reply(temporal_client, thread_id, turn.turn_id), 60)
    assert reply.text == "tools done: appended 'after the restart'" and len(ledger_lines()) == 1


async def test_a_turn_waiting_for_approvals_rolls_the_thread_over_and_goes_on_in_the_new_run(
        rollover_server, room: str, fake_model: FakeOpenAI):
    """On a server that suggests continue-as-new after 10 events, a waiting turn rolls its thread over while it
    waits (no activity running): the requests wait on in the new run, an approval given there runs its call once,
    the run rolls over again while the other call waits, a second click is still told who decided, and the caller
    of the original update gets its reply."""
    client = await connect(rollover_server.address)
    spec = _spec(room, require=["*"])
    thread_id = spec.ref.thread_id(new_thread_name())
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "ship it"}), ("note_line", {"line": "x"})]))
    async with running_agent(client, spec):
        turn = asyncio.create_task(submit_turn(client, spec.ref, thread_id,
                                               Turn(turn_id=new_turn_id(), text="do both")))

        async def runs(count: int):
            found = await runs_of(client, thread_id)
            return found if len(found) >= count else None

        await eventually(lambda: runs(2), 30, what="a rollover while both calls wait")
        by_tool = {p.tool: p for p in await _pending(client, thread_id, 2)}
        assert (await thread_snapshot(client, thread_id)).status == "waiting"
        approve = ApprovalDecision(approval_id=by_tool["append_line"].approval_id, approve=True, by="ann", via="api")
        assert not (await decide_approval(client, approve)).already_decided
        await eventually(lambda: runs(3), 30, what="a second rollover while note_line waits")
        again = await decide_approval(client, approve.model_copy(update={"by": "bob"}))
        assert again.already_decided and again.by == "ann"  # the decision crossed the rollover
        await decide_approval(client, ApprovalDecision(approval_id=by_tool["note_line"].approval_id, approve=False,
                                                       by="bob", via="cli", reason="not today"))
        reply = await asyncio.wait_for(turn, 30)
        snapshot = await thread_snapshot(client, thread_id)
    assert (snapshot.status, snapshot.turns_completed) == ("idle", 1)
    assert reply.text == "tools done: appended 'ship it' | denied by bob: not today"
    assert fake_model.count() == 2 and len(ledger_lines()) == 1
    run_ids = await runs_of(client, thread_id)
    histories = [await client.get_workflow_handle(thread_id, run_id=r).fetch_history() for r in run_ids]
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for h in histories for e in h.events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    assert scheduled.count("run_tool") == 1 and scheduled.count("call_model") == 2  # note_line was denied
    [carried] = payload_json(histories[0].events[-1].workflow_execution_continued_as_new_event_attributes.input)
    assert [r["tool"] for r in carried["state"]["resume"]["waiting"]] == ["append_line", "note_line"]
    approvals = [i for i in store_items(room, thread_id) if i.type == "approval"]
    assert sorted(i.data["state"] for i in approvals) == ["approved", "denied", "pending", "pending"]
    assert [i.type for i in store_items(room, thread_id)].count("tool_result") == 2
    await record_history(client.get_workflow_handle(thread_id, run_id=run_ids[0]), "approval_rolls_over")
    await record_history(client.get_workflow_handle(thread_id, run_id=run_ids[1]), "approval_resumed_after_rollover")
