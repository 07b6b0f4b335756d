"""The toolkit channel: an agent exposed to its room as a callable tool, and agents that call agents.

Serving. `--channel toolkit:NAME` runs `ToolkitChannel("NAME")`: it hosts the room's registry workflows (see
`workflows/toolkit.py`) and registers toolkit NAME with one tool, `run_<name>_task`, whose arguments are a strict
JSON schema (`TOOLKIT_SCHEMA`). A toolkit is *online* when one of the processes that registered it (and did not
stop gracefully) polls its agent's task queue; Temporal reports pollers for minutes after they stop, so a poll
counts only when it polled within `channels.delivery.ONLINE_WINDOW` (idle workers re-poll at least once a minute).

Invoking. `Room(client, room).invoke_tool(toolkit, tool, arguments)` validates the arguments, waits (up to
`timeout`) for the toolkit to be registered and online, then runs one turn on the serving agent's thread through
`channels.delivery.submit_turn`: a durable update-with-start, so a restart of the serving agent mid-turn still
returns the one result. The thread is a new one under the agent's thread dir unless `path` or `thread_id` names one.

Calling from an agent. `--use-toolkit NAME[?timeout=SECONDS&max-depth=N]` adds the tool `run_<name>_task` to the
agent's toolbox (`toolkit_tools`). Its call runs inside the caller's `run_tool` activity: the callee's turn id is
derived from the caller's workflow id, run id and activity id, which stay the same across the activity's retries, so
a caller killed mid-call re-attaches to the same callee turn when Temporal retries the activity, instead of running
the task twice. The activity heartbeats while it waits (`run_tool` does it for every tool). Each callee turn
carries `toolkit_depth` in its metadata; a call that would go deeper than `max-depth` (default 4) returns an error to
the model instead, so A→B→A loops end with an error reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

from temporalio import activity, common
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker
from threadline.activities.tools import Tool, current_call
from threadline.channels.base import ChannelAdapter, ChannelContext, temporal_worker
from threadline.channels.delivery import (
    DuplicateTurn,
    interrupt_turn,
    new_thread_name,
    new_turn_id,
    recent_pollers,
    submit_until_replied,
)
from threadline.models.limits import MAX_TURN_TEXT_BYTES, PayloadTooLarge, check_size, validate_name
from threadline.models.spec import AgentSpec
from threadline.models.thread import AgentRef, Reply, Turn
from threadline.models.toolkit import (
    ToolkitInfo,
    ToolkitInstance,
    ToolkitListing,
    ToolkitRegistration,
    ToolkitState,
    ToolkitTool,
    ToolResult,
)
from threadline.workflows.search_attributes import ROOM_ATTRIBUTE, start_attributes
from threadline.workflows.toolkit import MEMO_KEY, ToolkitWorkflow, room_task_queue, tool_name_for, toolkit_workflow_id

WAIT_POLL_INTERVAL = 0.5
DEFAULT_INVOKE_TIMEOUT = 30.0
DEFAULT_CALL_TIMEOUT = 300.0
DEFAULT_MAX_DEPTH = 4
CALL_ATTEMPTS = 20
"""Attempts of an agent's toolkit call activity: they re-attach to the same callee turn, so only crashes of the
caller's worker use them up."""
DEPTH_KEY = "toolkit_depth"

TOOLKIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "description": "The task, in plain language."},
        "path": {"type": "string", "description": "A thread to continue: its path in the room or its name."},
        "thread_id": {"type": "string", "description": "A thread to continue: its id (as returned by an earlier call)."},
        "model": {"type": "string", "description": "A model for this task instead of the agent's own."},
        "instructions": {"type": "string", "description": "Extra instructions for this task."},
    },
    "required": ["prompt"],
    "additionalProperties": False,
}


class ToolkitError(Exception):
    """A toolkit call that cannot run; the message says why and what to do."""


class UnknownToolkit(ToolkitError):
    pass


class UnknownTool(ToolkitError):
    pass


class ToolkitOffline(ToolkitError):
    pass


class InvalidArguments(ToolkitError):
    def __init__(self, tool: str, violations: list[str]) -> None:
        super().__init__(f"invalid arguments for {tool}: " + "; ".join(violations))
        self.violations = violations


class ToolTurnFailed(ToolkitError):
    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


# Validation: the subset of JSON Schema that toolkit schemas use, with one message per violation.

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "object": (dict,),
    "array": (list,), "null": (type(None),),
}


def schema_violations(schema: Mapping[str, Any], value: Any, where: str = "arguments") -> list[str]:
    """Checks `type`, `properties`, `required`, `additionalProperties`, `enum`, `minLength` and `items`; enough for
    toolkit schemas without another dependency. Returns every violation, each naming where it is."""
    violations: list[str] = []
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        ok = any(
            isinstance(value, _JSON_TYPES.get(t, ())) and not (t in ("integer", "number") and isinstance(value, bool))
            for t in allowed
        )
        if not ok:
            return [f"{where}: expected {' or '.join(allowed)}, got {_json_type(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        violations.append(f"{where}: must be one of {', '.join(json.dumps(v) for v in schema['enum'])}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        violations.append(f"{where}: must not be empty" if schema["minLength"] == 1
                          else f"{where}: shorter than {schema['minLength']} characters")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                violations.append(f"{where}.{name}: required")
        for name, item in value.items():
            if name in properties:
                violations += schema_violations(properties[name], item, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                known = ", ".join(properties) or "none"
                violations.append(f"{where}.{name}: unknown property (allowed: {known})")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for n, item in enumerate(value):
            violations += schema_violations(schema["items"], item, f"{where}[{n}]")
    return violations


def _json_type(value: Any) -> str:
    for name, kinds in _JSON_TYPES.items():
        if isinstance(value, kinds) and not (name in ("integer", "number") and isinstance(value, bool)):
            return "integer" if name == "integer" else name
    return type(value).__name__


def parse_arguments(arguments: str | Mapping[str, Any], tool: str) -> dict[str, Any]:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise InvalidArguments(tool, [f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"]) from None
    if not isinstance(arguments, Mapping):
        raise InvalidArguments(tool, [f"arguments: expected a JSON object, got {_json_type(arguments)}"])
    try:
        check_size("the arguments JSON", len(json.dumps(arguments, ensure_ascii=False).encode()),
                   "put large content in room storage and pass its path in the prompt", MAX_TURN_TEXT_BYTES)
    except PayloadTooLarge as e:
        raise InvalidArguments(tool, [str(e)]) from None
    return dict(arguments)


def task_thread_id(agent: AgentRef, arguments: Mapping[str, Any], new_name: str, tool: str) -> str:
    """The thread a task runs in: `thread_id` or `path` (which must agree when both are given), else a new one."""
    path, thread_id = arguments.get("path"), arguments.get("thread_id")
    chosen = [agent.thread_id(v) for v in (thread_id, path) if isinstance(v, str) and v.strip()]
    if len(chosen) == 2 and chosen[0] != chosen[1]:
        raise InvalidArguments(
            tool,
            [f"arguments.path and arguments.thread_id name different threads ({chosen[1]} and {chosen[0]}): "
             "give one of them"],
        )
    return chosen[0] if chosen else agent.thread_id(new_name)


def toolkit_info(name: str, agent: AgentRef) -> ToolkitInfo:
    return ToolkitInfo(
        room=agent.room,
        name=name,
        description=f"{agent.agent_name}, an agent of room {agent.room}",
        agent=agent,
        tools=[ToolkitTool(
            name=tool_name_for(name),
            description=f"send a task to {agent.agent_name} and return its reply",
            input_schema=TOOLKIT_SCHEMA,
        )],
    )


# Online state.


async def _listing(client: Client, state: ToolkitState) -> ToolkitListing | None:
    info = state.info
    if info is None:
        return None
    online = False
    if state.instances:
        online = bool({i.identity for i in state.instances} & await recent_pollers(client, info.agent.task_queue))
    return ToolkitListing(
        name=info.name, room=info.room, description=info.description, agent=info.agent.agent_name,
        thread_dir=info.agent.threads_dir, task_queue=info.agent.task_queue, online=online,
        registered_at=info.registered_at, tools=info.tools,
    )


# Serving.


class ToolkitChannel(ChannelAdapter):
    """`--channel toolkit:NAME` (one adapter for all of an agent's toolkit channels): hosts the room's registry
    workflows, registers the toolkits once the agent's workers poll, and un-registers them on a graceful stop."""

    def __init__(self, *names: str) -> None:
        if not names:
            raise ValueError("a toolkit channel needs at least one toolkit name")
        self.names = [validate_name("toolkit name", n) for n in names]
        self.name = ", ".join(f"toolkit:{n}" for n in self.names)

    def workers(self, context: ChannelContext) -> list[Worker]:
        return [
            temporal_worker(context.client, room_task_queue(context.spec.room), [ToolkitWorkflow]),
        ]

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        identity = context.client.identity
        instance = ToolkitInstance(identity=identity, started_at=datetime.now(timezone.utc))
        for name in self.names:
            await register_toolkit(context.client, toolkit_info(name, context.spec.ref), instance)
        try:
            await stop.wait()
        finally:
            for name in self.names:
                with contextlib.suppress(Exception):
                    handle = context.client.get_workflow_handle(toolkit_workflow_id(context.spec.room, name))
                    await asyncio.wait_for(handle.execute_update(ToolkitWorkflow.unregister, identity), 10)


async def register_toolkit(client: Client, info: ToolkitInfo, instance: ToolkitInstance) -> ToolkitState:
    start = WithStartWorkflowOperation(
        ToolkitWorkflow.run,
        ToolkitState(room=info.room, name=info.name),
        id=toolkit_workflow_id(info.room, info.name),
        task_queue=room_task_queue(info.room),
        id_conflict_policy=common.WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=start_attributes(room=info.room, agent=info.agent.agent_name, channel="toolkit"),
    )
    return await client.execute_update_with_start_workflow(
        ToolkitWorkflow.register, ToolkitRegistration(info=info, instance=instance), start_workflow_operation=start
    )


# Invoking.


async def run_turn(client: Client, agent: AgentRef, thread_id: str, turn: Turn) -> Reply:
    try:
        return await submit_until_replied(client, agent, thread_id, turn)
    except DuplicateTurn as e:
        raise ToolTurnFailed(str(e)) from e


@dataclass
class Room:
    """A room's toolkits, for applications: `await Room(client, "support").invoke_tool("billing", "run_billing_task",
    {"prompt": "..."})`. The client must use `pydantic_data_converter` (`channels.delivery.connect` does)."""

    client: Client
    room: str
    poll_interval: float = field(default=WAIT_POLL_INTERVAL, repr=False)

    def __post_init__(self) -> None:
        validate_name("room", self.room)

    async def list_toolkits(self) -> list[ToolkitListing]:
        """Every toolkit registered in the room, by name, with its online state. Enumeration goes through Temporal
        visibility (a toolkit registered a moment ago may show up a second later); each entry is read fresh."""
        query = (
            f"WorkflowType = 'ToolkitWorkflow' AND {ROOM_ATTRIBUTE.name} = '{self.room}' "
            "AND ExecutionStatus = 'Running'"
        )
        prefix = toolkit_workflow_id(self.room, "")
        names = sorted({
            execution.id.removeprefix(prefix)
            async for execution in self.client.list_workflows(query)
            if execution.id.startswith(prefix)
        })
        found = await asyncio.gather(*[self.get_toolkit(name) for name in names])
        return [listing for listing in found if listing is not None]

    async def get_toolkit(self, name: str) -> ToolkitListing | None:
        state = await self._state(name)
        return None if state is None else await _listing(self.client, state)

    async def _state(self, name: str) -> ToolkitState | None:
        handle = self.client.get_workflow_handle(toolkit_workflow_id(self.room, name))
        try:
            description = await handle.describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if description.status != WorkflowExecutionStatus.RUNNING:
            return None
        raw = (await description.memo()).get(MEMO_KEY)
        state = ToolkitState.model_validate(raw) if raw else None
        return state if state is not None and state.info is not None else None

    async def wait_for_toolkit(self, name: str, timeout: float, tool: str | None = None,
                               arguments: Mapping[str, Any] | None = None,
                               on_wait: Callable[[str], None] | None = None) -> ToolkitListing:
        """Waits up to `timeout` seconds for the toolkit to be registered and online. The tool and the arguments
        are checked as soon as the toolkit is known, so mistakes fail at once, not after the wait. `on_wait` hears
        once that the wait has begun."""
        validate_name("toolkit name", name)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            listing = await self.get_toolkit(name)
            if listing is not None and tool is not None:
                check_call(listing, tool, arguments or {})
            if listing is not None and listing.online:
                return listing
            if time.monotonic() >= deadline:
                break
            if on_wait is not None:
                on_wait(f"toolkit {name!r} is {'offline' if listing else 'not registered'}: waiting up to "
                        f"{timeout:g} s for it")
                on_wait = None
            await asyncio.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
        waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
        if listing is None:
            others = await self.list_toolkits()
            known = ", ".join(f"{t.name} ({'online' if t.online else 'offline'})" for t in others) or "none"
            raise UnknownToolkit(
                f"there is no toolkit {name!r} in room {self.room}{waited}; toolkits: {known} "
                f"(an agent serves one with --channel toolkit:NAME)"
            )
        raise ToolkitOffline(
            f"toolkit {name!r} is offline{waited}: agent {listing.agent} is not running (no worker polls "
            f"{listing.task_queue}); start it with: threadline process join --room {self.room} "
            f"--agent-name {listing.agent} --channel toolkit:{name}"
        )

    async def invoke_tool(
        self,
        toolkit: str,
        tool: str,
        arguments: str | Mapping[str, Any],
        *,
        timeout: float = DEFAULT_INVOKE_TIMEOUT,
        turn_id: str | None = None,
        thread_name: str | None = None,
        sender: str = "toolkit",
        metadata: Mapping[str, Any] | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> ToolResult:
        """Runs the tool as one turn of the serving agent and returns its reply. `timeout` bounds the wait for the
        toolkit to come online, not the turn: once delivered, the turn is durable and this waits for its reply.
        Passing the same `turn_id` again (with the same thread) returns the same reply without running it twice."""
        args = parse_arguments(arguments, tool)
        listing = await self.wait_for_toolkit(toolkit, timeout, tool, args, on_wait)
        agent = AgentRef(room=self.room, agent_name=listing.agent, thread_dir=listing.thread_dir)
        thread_id = task_thread_id(agent, args, thread_name or new_thread_name(), tool)
        turn = Turn(
            turn_id=turn_id or new_turn_id(),
            channel=f"toolkit:{toolkit}",
            sender=sender,
            text=args["prompt"],
            model=args.get("model"),
            instructions=args.get("instructions"),
            metadata={"toolkit": toolkit, "tool": tool, DEPTH_KEY: 1, **(metadata or {})},
        )
        reply = await run_turn(self.client, agent, thread_id, turn)
        if reply.status != "completed":
            raise ToolTurnFailed(
                f"{listing.agent} did not complete the task ({reply.status}): {reply.error or 'no error given'} "
                f"(thread {thread_id})",
                reply,
            )
        return ToolResult(text=reply.text, thread_id=thread_id, turn_id=turn.turn_id)


def check_call(listing: ToolkitListing, tool: str, arguments: Mapping[str, Any]) -> ToolkitTool:
    found = next((t for t in listing.tools if t.name == tool), None)
    if found is None:
        raise UnknownTool(
            f"toolkit {listing.name!r} has no tool {tool!r}; its tools: {', '.join(t.name for t in listing.tools)}"
        )
    violations = schema_violations(found.input_schema, dict(arguments))
    if violations:
        raise InvalidArguments(tool, violations)
    return found


# Agents calling agents: `--use-toolkit`.


@dataclass(frozen=True)
class UseToolkit:
    name: str
    timeout: float = DEFAULT_CALL_TIMEOUT
    max_depth: int = DEFAULT_MAX_DEPTH


def parse_use_toolkit(value: str) -> UseToolkit:
    """`NAME` or `NAME?timeout=SECONDS&max-depth=N`; a ValueError names what is wrong."""
    name, _, query = value.strip().partition("?")
    validate_name("toolkit name", name)
    params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = set(params) - {"timeout", "max-depth"}
    if unknown:
        raise ValueError(f"--use-toolkit {value!r}: unknown option {sorted(unknown)[0]!r}; use timeout or max-depth")
    try:
        timeout = float(params.get("timeout", DEFAULT_CALL_TIMEOUT))
        max_depth = int(params.get("max-depth", DEFAULT_MAX_DEPTH))
    except ValueError:
        raise ValueError(f"--use-toolkit {value!r}: timeout is seconds and max-depth a whole number") from None
    if not 0 < timeout <= 86400 or not 1 <= max_depth <= 32:
        raise ValueError(f"--use-toolkit {value!r}: timeout must be 1..86400 seconds and max-depth 1..32")
    return UseToolkit(name=name, timeout=timeout, max_depth=max_depth)


@dataclass(frozen=True)
class ToolkitCallTool(Tool):
    """A tool whose schema is the toolkit's, not derived from the function's signature."""

    input_schema: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.input_schema


def toolkit_tools(spec: AgentSpec) -> list[Tool]:
    """The tools `--use-toolkit` gives an agent; the worker adds them to the agent's toolbox."""
    return [_call_tool(spec, parse_use_toolkit(value)) for value in spec.use_toolkits]


def _call_tool(spec: AgentSpec, use: UseToolkit) -> Tool:
    async def call(prompt: str, path: str | None = None, thread_id: str | None = None, model: str | None = None,
                   instructions: str | None = None) -> str:
        arguments = {k: v for k, v in {"prompt": prompt, "path": path, "thread_id": thread_id, "model": model,
                                       "instructions": instructions}.items() if v is not None}
        return await call_toolkit(spec, use, arguments)

    return ToolkitCallTool(
        name=tool_name_for(use.name),
        description=f"send a task to the agent serving toolkit {use.name} and return its reply (JSON: text, "
                    "thread_id; pass thread_id again to continue that conversation)",
        fn=call,
        timeout_seconds=use.timeout + 60,
        max_attempts=CALL_ATTEMPTS,
        calls_agent=True,
        input_schema=TOOLKIT_SCHEMA,
    )


def caller_depth(room: str, thread_id: str, store_url: str | None = None) -> int:
    """The toolkit depth of the turn running in the caller's thread: from the metadata of its (last) user item."""
    from threadline.activities.stores import open_thread_store

    for item in reversed(open_thread_store(room, store_url).items(thread_id, limit=500)):
        if item.type == "user" and "channel" in item.data:
            depth = (item.data.get("metadata") or {}).get(DEPTH_KEY, 0)
            return depth if isinstance(depth, int) else 0
    return 0


async def call_toolkit(spec: AgentSpec, use: UseToolkit, arguments: dict[str, Any]) -> str:
    """Runs in the caller's `run_tool` activity. Answers the model with JSON `{"text", "thread_id"}`, or with a
    line starting `error:` that the model can act on."""
    info = activity.info()
    call = current_call.get()
    client = activity.client()
    tool = tool_name_for(use.name)
    depth = await asyncio.to_thread(caller_depth, spec.room, call.thread_id, spec.thread_store_url) + 1
    if depth > use.max_depth:
        return (f"error: toolkit call depth limit {use.max_depth} reached: this task is already {depth - 1} toolkit "
                f"calls deep, so {tool} was not called; answer without it")
    room = Room(client, spec.room)
    listing = await room.get_toolkit(use.name)
    if listing is None:
        known = ", ".join(t.name for t in await room.list_toolkits()) or "none"
        return f"error: there is no toolkit {use.name!r} in room {spec.room} (toolkits: {known})"
    try:
        check_call(listing, tool, arguments)
        agent = AgentRef(room=spec.room, agent_name=listing.agent, thread_dir=listing.thread_dir)
        # The call's place in the caller's thread: the same on every retry, across continue-as-new, and unique.
        key = hashlib.sha256(f"{call.thread_id}|{call.seq}".encode()).hexdigest()
        thread_id = task_thread_id(agent, arguments, f"from-{spec.agent_name}-{key[:12]}", tool)
    except ToolkitError as e:
        return f"error: {e}"
    turn = Turn(
        turn_id=f"toolkit-{key[:32]}",
        channel=f"toolkit:{use.name}",
        sender=spec.agent_name,
        text=arguments["prompt"],
        model=arguments.get("model"),
        instructions=arguments.get("instructions"),
        metadata={"toolkit": use.name, "tool": tool, DEPTH_KEY: depth, "caller_thread_id": call.thread_id},
    )
    # The deadline counts from the first attempt, so a retried call does not get a fresh timeout.
    remaining = (info.scheduled_time + timedelta(seconds=use.timeout) - datetime.now(timezone.utc)).total_seconds()
    try:
        reply = await asyncio.wait_for(run_turn(client, agent, thread_id, turn), max(remaining, 5.0))
    except TimeoutError:
        with contextlib.suppress(Exception):
            await interrupt_turn(client, thread_id, turn.turn_id)
        return f"error: {listing.agent} did not finish the task within {use.timeout:g} s (thread {thread_id})"
    except asyncio.CancelledError:
        # The caller's turn was interrupted: stop the callee's turn too. A worker shutdown is not a cancellation of
        # the call: the retried activity re-attaches to the running turn.
        if not activity.is_worker_shutdown():
            with contextlib.suppress(Exception):
                await asyncio.shield(interrupt_turn(client, thread_id, turn.turn_id))
        raise
    except ToolTurnFailed as e:
        return f"error: {e}"
    if reply.status != "completed":
        return f"error: {listing.agent} did not complete the task ({reply.status}): {reply.error} (thread {thread_id})"
    return json.dumps({"text": reply.text, "thread_id": thread_id}, ensure_ascii=False)
