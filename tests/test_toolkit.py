"""The toolkit channel end to end: real Temporal dev server, fake model, in-process and killable agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from temporalio.client import Client
from threadline import worker
from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import connect, new_turn_id, submit_turn, thread_snapshot
from threadline.channels.registry import adapters_for
from threadline.channels.toolkit.room import Room
from threadline.channels.toolkit.schema import InvalidArguments, ToolkitOffline, UnknownTool, UnknownToolkit
from threadline.models.limits import MAX_TURN_TEXT_BYTES
from threadline.models.spec import AgentSpec
from threadline.models.thread import Turn
from threadline.workflows.toolkit import toolkit_workflow_id

from tests.cli_helpers import CliProcess, cli_env
from tests.conftest import REPO
from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse
from tests.runtime_support import record_history

CLI = [sys.executable, "-m", "threadline.cli.app"]


@dataclass
class RunningAgent:
    spec: AgentSpec
    client: Client
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def agent(temporal_server) -> AsyncIterator[Callable[..., RunningAgent]]:
    """In-process agents with their toolkit channels, each with a client of its own (as separate processes)."""
    running: list[RunningAgent] = []

    async def start(spec: AgentSpec) -> RunningAgent:
        stop, ready = asyncio.Event(), asyncio.Event()
        client = await connect(temporal_server.address)
        task = asyncio.create_task(worker.run_agent(client, spec, stop, ready, channels=adapters_for(spec.channels)))
        await asyncio.wait_for(asyncio.wait([asyncio.ensure_future(ready.wait()), task],
                                            return_when=asyncio.FIRST_COMPLETED), 30)
        if task.done():
            task.result()
        agent = RunningAgent(spec, client, stop, task)
        running.append(agent)
        return agent

    yield start
    for a in running:
        a.stop.set()
    for a in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(a.task, 30)


def spec(room: str, name: str, *, serves: str | None = None, uses: list[str] | None = None) -> AgentSpec:
    return AgentSpec(room=room, agent_name=name, model="fake-model",
                     channels=[f"toolkit:{serves}"] if serves else [], use_toolkits=uses or [])


def cli(address: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "room", "agent", *args, "--temporal-address", address], cwd=REPO, env=cli_env(), capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)


async def online(room: Room, name: str) -> bool:
    listing = await room.get_toolkit(name)
    return listing is not None and listing.online


# Exposing and listing.


async def test_list_toolkits_shows_online_then_offline(temporal_server, temporal_client: Client, room: str, agent):
    bee = await agent(spec(room, "bee", serves="helper"))
    toolkits = Room(temporal_client, room)
    await wait_until(lambda: online(toolkits, "helper"), 15, "toolkit helper online")
    await wait_until(lambda: _listed(toolkits, "helper"), 15, "toolkit helper in visibility")

    listed = await asyncio.to_thread(cli, temporal_server.address, "list-toolkits", "--room", room)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "helper" and entry["agent"] == "bee" and entry["online"] is True
    (tool,) = entry["tools"]
    assert tool["name"] == "run_helper_task"
    assert tool["description"] == "send a task to bee and return its reply"
    schema = tool["input_schema"]
    assert schema["required"] == ["prompt"] and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"prompt", "path", "thread_id", "model", "instructions"}

    await bee.shutdown()
    listing = await toolkits.get_toolkit("helper")
    assert listing is not None and not listing.online  # a graceful stop un-registers at once
    table = await asyncio.to_thread(cli, temporal_server.address, "list-toolkits", "--room", room, "-o", "table")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("helper"))
    assert "offline" in row and "bee" in row and "run_helper_task" in row


async def _listed(room: Room, name: str) -> bool:
    return any(t.name == name for t in await room.list_toolkits())


# Invoking from the CLI and the Python API.


async def test_invoke_tool_returns_text_and_thread_then_continues_it(
    temporal_server, room: str, agent, fake_model: FakeOpenAI
):
    await agent(spec(room, "bee", serves="helper"))
    first = await asyncio.to_thread(
        cli, temporal_server.address, "invoke-tool", "--room", room, "--toolkit", "helper", "--tool",
        "run_helper_task", "--arguments", json.dumps({"prompt": "remember the word marmalade"}),
    )
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["text"] == "echo: remember the word marmalade"
    assert result["thread_id"].startswith(f"{room}/.threads/bee/") and result["turn_id"]

    second = await asyncio.to_thread(
        cli, temporal_server.address, "invoke-tool", "--room", room, "--toolkit", "helper", "--tool",
        "run_helper_task", "--arguments", json.dumps({"prompt": "which word?", "thread_id": result["thread_id"]}),
        "-o", "text",
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "echo: which word?"
    contents = [m.get("content") for m in fake_model.requests[-1].messages]
    assert "remember the word marmalade" in contents and "echo: remember the word marmalade" in contents

    items = ThreadStore.for_room(room).items(result["thread_id"])
    users = [i for i in items if i.type == "user"]
    assert [u.data["channel"] for u in users] == ["toolkit:helper", "toolkit:helper"]
    assert users[0].data["metadata"]["toolkit_depth"] == 1


async def test_invoke_tool_errors(temporal_server, temporal_client: Client, room: str, agent, fake_model: FakeOpenAI):
    fake_model.script(lambda req: FakeResponse.error(400, message="no such model") if "fail" in req.last_user_text
                      else None)
    await agent(spec(room, "bee", serves="helper"))
    toolkits = Room(temporal_client, room)
    await wait_until(lambda: online(toolkits, "helper"), 15, "toolkit helper online")
    await wait_until(lambda: _listed(toolkits, "helper"), 15, "toolkit helper in visibility")
    base = ["invoke-tool", "--room", room, "--toolkit", "helper", "--tool", "run_helper_task"]

    invalid = await asyncio.to_thread(
        cli, temporal_server.address, *base, "--arguments", json.dumps({"prompt": 7, "colour": "red"})
    )
    assert invalid.returncode == 2
    assert "arguments.prompt: expected string, got integer" in invalid.stderr
    assert "arguments.colour: unknown property" in invalid.stderr
    missing = await asyncio.to_thread(cli, temporal_server.address, *base, "--arguments", "{}")
    assert missing.returncode == 2 and "arguments.prompt: required" in missing.stderr

    unknown_toolkit = await asyncio.to_thread(
        cli, temporal_server.address, "invoke-tool", "--room", room, "--toolkit", "nope", "--tool", "run_nope_task",
        "--arguments", '{"prompt": "hi"}', "--timeout", "0",
    )
    assert unknown_toolkit.returncode == 1
    assert "no toolkit 'nope'" in unknown_toolkit.stderr and "helper (online)" in unknown_toolkit.stderr
    unknown_tool = await asyncio.to_thread(
        cli, temporal_server.address, "invoke-tool", "--room", room, "--toolkit", "helper", "--tool", "run_x_task",
        "--arguments", '{"prompt": "hi"}',
    )
    assert unknown_tool.returncode == 1 and "its tools: run_helper_task" in unknown_tool.stderr

    failed = await asyncio.to_thread(cli, temporal_server.address, *base, "--arguments", '{"prompt": "fail now"}')
    assert failed.returncode == 1
    assert "bee did not complete the task (failed): model fake-model answered HTTP 400: no such model" in failed.stderr

    with pytest.raises(InvalidArguments, match="name different threads"):
        await toolkits.invoke_tool("helper", "run_helper_task", {"prompt": "hi", "path": "a", "thread_id": "b"})
    with pytest.raises(UnknownTool):
        await toolkits.invoke_tool("helper", "run_other_task", {"prompt": "hi"})
    with pytest.raises(UnknownToolkit):
        await toolkits.invoke_tool("other", "run_other_task", {"prompt": "hi"}, timeout=0)


async def test_invoke_waits_for_the_toolkit_to_come_online(temporal_server, temporal_client: Client, room: str, agent):
    caller = _ToolkitCli(temporal_server.address, "invoke-tool", "--room", room, "--toolkit", "helper", "--tool",
                         "run_helper_task", "--arguments", '{"prompt": "are you there?"}', "-o", "text",
                         "--timeout", "60")
    try:
        await asyncio.to_thread(caller.wait_for_line, "toolkit 'helper' is not registered: waiting up to 60 s",
                                stream="stderr")
        bee = await agent(spec(room, "bee", serves="helper"))
        code = await asyncio.to_thread(caller.wait, 60)
        assert code == 0, caller.transcript()
        assert caller.stdout == ["echo: are you there?"]
    finally:
        caller.kill()

    # Registered but stopped: the wait ends with a clear error.
    await bee.shutdown()
    with pytest.raises(ToolkitOffline, match="toolkit 'helper' is offline after waiting 1 s: agent bee"):
        await Room(temporal_client, room).invoke_tool("helper", "run_helper_task", {"prompt": "hi"}, timeout=1)


class _ToolkitCli(CliProcess):
    """A background `room agent` command through the test entry that mounts it."""

    def __init__(self, address: str, *args: str) -> None:
        import tests.cli_helpers as helpers

        original = helpers.command
        helpers.command = lambda a: [*CLI, *a]
        try:
            super().__init__("room", "agent", *args, "--temporal-address", address)
        finally:
            helpers.command = original


# Agents calling agents.


def _first_call(req: FakeRequest, tool: str, prompt: str) -> FakeResponse:
    """The caller's model: call the tool, then answer with what it returned."""
    if req.tool_results:
        return FakeResponse.text("heard: " + req.tool_results[0]["content"])
    assert tool in req.tool_names, req.tool_names
    return FakeResponse.tool_calls([(tool, {"prompt": prompt})])


async def test_agent_uses_another_agents_toolkit(temporal_client: Client, room: str, agent, fake_model: FakeOpenAI):
    def script(req: FakeRequest) -> FakeResponse | None:
        if req.last_user_text == "ask bee":
            return _first_call(req, "run_helper_task", "what is six times seven?")
        if req.last_user_text == "what is six times seven?":
            return FakeResponse.text("42, says bee")
        return None

    fake_model.script(script)
    await agent(spec(room, "bee", serves="helper"))
    ant = await agent(spec(room, "ant", uses=["helper?timeout=60"]))
    reply = await submit_turn(temporal_client, ant.spec.ref, ant.spec.ref.thread_id("t1"),
                              Turn(turn_id=new_turn_id(), text="ask bee"))
    assert reply.status == "completed", reply.error
    assert "42, says bee" in reply.text

    store = ThreadStore.for_room(room)
    (result,) = [i for i in store.items(ant.spec.ref.thread_id("t1")) if i.type == "tool_result"]
    callee = json.loads(result.text)
    assert callee["text"] == "42, says bee" and callee["thread_id"].startswith(f"{room}/.threads/bee/from-ant-")
    (task,) = [i for i in store.items(callee["thread_id"]) if i.type == "user"]
    assert task.sender == "ant" and task.data["metadata"]["toolkit_depth"] == 1
    assert task.data["metadata"]["caller_thread_id"] == ant.spec.ref.thread_id("t1")

    # The call is a child of ant's thread in Temporal, so the UI links the thread to its call.
    call_id = f"{ant.spec.ref.thread_id('t1')}/calls/{result.seq}"
    call = await temporal_client.get_workflow_handle(call_id).describe()
    assert call.workflow_type == "ToolCallWorkflow" and call.parent_id == ant.spec.ref.thread_id("t1")
    await record_history(temporal_client.get_workflow_handle(ant.spec.ref.thread_id("t1")), "toolkit_call")
    await record_history(temporal_client.get_workflow_handle(call_id), "tool_call_child")
    await record_history(temporal_client.get_workflow_handle(toolkit_workflow_id(room, "helper")), "toolkit_registry")


async def test_callee_killed_mid_call_runs_the_task_once(
    temporal_server, temporal_client: Client, room: str, agent, fake_model: FakeOpenAI
):
    """kill -9 bee while it works on ant's task, restart it: ant's turn completes once, with bee's one answer."""
    release = threading.Event()
    calls = {"task": 0}

    def script(req: FakeRequest) -> FakeResponse | None:
        if req.last_user_text == "ask bee":
            return _first_call(req, "run_helper_task", "slow task")
        if req.last_user_text == "slow task":
            calls["task"] += 1
            if calls["task"] == 1:
                return FakeResponse.block(release, then=FakeResponse.text("from the dead worker"), timeout=60)
            return FakeResponse.text("bee finished the slow task")
        return None

    fake_model.script(script)
    bee_spec = spec(room, "bee", serves="helper")
    bee = _BeeProcess(temporal_server.address, bee_spec)
    ant = await agent(spec(room, "ant", uses=["helper?timeout=120"]))
    thread = ant.spec.ref.thread_id("t1")
    try:
        turn = asyncio.create_task(submit_turn(temporal_client, ant.spec.ref, thread,
                                               Turn(turn_id=new_turn_id(), text="ask bee")))
        await fake_model.wait_for_async(lambda: calls["task"] == 1, timeout=30)
        bee.kill()
        bee = _BeeProcess(temporal_server.address, bee_spec)
        await fake_model.wait_for_async(lambda: calls["task"] == 2, timeout=60)
        reply = await asyncio.wait_for(turn, 60)

        assert reply.status == "completed", reply.error
        assert "bee finished the slow task" in reply.text and "dead worker" not in reply.text
        assert calls["task"] == 2  # the attempt cut by the kill, then the one retry on the restarted bee
        store = ThreadStore.for_room(room)
        results = [i for i in store.items(thread) if i.type == "tool_result"]
        assert len(results) == 1  # ant ran its tool call once
        callee = json.loads(results[0].text)["thread_id"]
        snapshot = await thread_snapshot(temporal_client, callee)
        assert snapshot.turns_completed == 1 and not snapshot.queued_turn_ids
        answers = [i for i in store.items(callee) if i.type == "assistant"]
        assert [a.text for a in answers] == ["bee finished the slow task"]
    finally:
        release.set()
        bee.kill()


async def test_caller_killed_mid_call_reattaches_to_the_same_callee_turn(
    temporal_server, temporal_client: Client, room: str, agent, fake_model: FakeOpenAI
):
    """kill -9 ant while bee works on its task, restart ant: the retried tool call re-attaches to bee's turn (bee's
    model sees the task once) and ant's turn completes with bee's answer."""
    release = threading.Event()
    calls = {"task": 0}

    def script(req: FakeRequest) -> FakeResponse | None:
        if req.last_user_text == "ask bee":
            return _first_call(req, "run_helper_task", "slow task")
        if req.last_user_text == "slow task":
            calls["task"] += 1
            return FakeResponse.block(release, then=FakeResponse.text("bee finished the slow task"), timeout=60)
        return None

    fake_model.script(script)
    await agent(spec(room, "bee", serves="helper"))
    ant_spec = spec(room, "ant", uses=["helper?timeout=120"])
    ant = _BeeProcess(temporal_server.address, ant_spec)
    thread = ant_spec.ref.thread_id("t1")
    try:
        turn = asyncio.create_task(submit_turn(temporal_client, ant_spec.ref, thread,
                                               Turn(turn_id=new_turn_id(), text="ask bee")))
        await fake_model.wait_for_async(lambda: calls["task"] == 1, timeout=30)
        ant.kill()
        ant = _BeeProcess(temporal_server.address, ant_spec)
        # The retried call must be waiting on bee's turn before bee answers, or this would not test re-attaching.
        await wait_until(lambda: _attempts(temporal_client, thread), 30, "ant's tool call retried")
        release.set()
        reply = await asyncio.wait_for(turn, 60)
        assert reply.status == "completed", reply.error
        assert "bee finished the slow task" in reply.text
        assert calls["task"] == 1  # bee ran the task once
        store = ThreadStore.for_room(room)
        results = [i for i in store.items(thread) if i.type == "tool_result"]
        assert len(results) == 1
        callee = json.loads(results[0].text)["thread_id"]
        assert (await thread_snapshot(temporal_client, callee)).turns_completed == 1
        assert len([i for i in store.items(callee) if i.type == "user"]) == 1
    finally:
        release.set()
        ant.kill()


async def _attempts(client: Client, thread_id: str) -> bool:
    """True once the run_tool activity of the thread's toolkit call (a child workflow) runs its second attempt."""
    thread = await client.get_workflow_handle(thread_id).describe()
    for child in thread.raw_description.pending_children:
        call = await client.get_workflow_handle(child.workflow_id).describe()
        if any(
            p.activity_type.name == "run_tool" and p.attempt >= 2 and p.HasField("last_started_time")
            and p.last_started_time.seconds > 0
            for p in call.raw_description.pending_activities
        ):
            return True
    return False


class _BeeProcess:
    def __init__(self, address: str, spec: AgentSpec) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.agent_process", address, spec.model_dump_json(), "with-channels"],
            cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"agent process did not start (exit code {self.proc.wait()})")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def test_call_loop_ends_at_the_depth_limit(temporal_client: Client, room: str, agent, fake_model: FakeOpenAI):
    """ant and bee call each other: the fifth nested call is refused and every level answers."""

    def script(req: FakeRequest) -> FakeResponse | None:
        if req.last_user_text.startswith("loop"):
            if req.tool_results:
                return FakeResponse.text("got: " + req.tool_results[0]["content"])
            other = next(t for t in req.tool_names if t in ("run_ant_task", "run_bee_task"))
            return FakeResponse.tool_calls([(other, {"prompt": "loop again"})])
        return None

    fake_model.script(script)
    await agent(spec(room, "bee", serves="bee", uses=["ant"]))
    ant = await agent(spec(room, "ant", serves="ant", uses=["bee"]))
    reply = await asyncio.wait_for(
        submit_turn(temporal_client, ant.spec.ref, ant.spec.ref.thread_id("t1"),
                    Turn(turn_id=new_turn_id(), text="loop")),
        90,
    )
    assert reply.status == "completed", reply.error
    assert reply.text.startswith("got: ")
    assert "toolkit call depth limit 4 reached" in reply.text
    depths = sorted(
        i.data["metadata"].get("toolkit_depth", 0)
        for t in ThreadStore.for_room(room).threads()
        for i in ThreadStore.for_room(room).items(t.thread_id)
        if i.type == "user"
    )
    assert depths == [0, 1, 2, 3, 4]  # the user's turn, then four nested calls
    assert fake_model.count() == 10  # each of the five turns: a tool call, then the answer


async def test_arguments_over_the_limit_are_refused_before_sending(temporal_client: Client, room: str,
                                                                   fake_model: FakeOpenAI):
    with pytest.raises(InvalidArguments) as refused:
        await Room(temporal_client, room).invoke_tool("helper", "run_helper_task", {"prompt": "x" * (300 << 10)},
                                                      timeout=0)
    assert "invalid arguments for run_helper_task: the arguments JSON is" in str(refused.value)
    assert f"over the {MAX_TURN_TEXT_BYTES:,} byte limit: put large content in room storage" in str(refused.value)
    assert fake_model.count() == 0


async def test_an_invoker_is_told_which_approval_the_task_waits_for(temporal_client: Client, room: str, agent,
                                                                   fake_model: FakeOpenAI):
    from threadline.channels.approvals import decide_approval
    from threadline.models.thread import ApprovalDecision

    from tests.test_approvals import TOOLS, tools_done

    await agent(spec(room, "bee", serves="helper").model_copy(update={"tools": TOOLS}))
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "for the caller"})]))
    told: list[str] = []
    call = asyncio.create_task(Room(temporal_client, room).invoke_tool(
        "helper", "run_helper_task", {"prompt": "append"}, timeout=30, on_wait=told.append))
    def approval_told() -> list[str]:
        return [m for m in told if m.startswith("the task waits for a person to approve append_line ")]

    await wait_until(approval_told, 30, "the invoker is told about the approval")
    approval_id = approval_told()[0].rsplit(" ", 1)[1].rstrip(")")
    await decide_approval(temporal_client, ApprovalDecision(approval_id=approval_id, approve=True, by="ops",
                                                            via="api"))
    result = await asyncio.wait_for(call, 30)
    assert result.text == "tools done: appended 'for the caller'" and len(approval_told()) == 1
