"""Agents calling agents: `--use-toolkit NAME` adds `run_<name>_task` to the agent's toolbox."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

from temporalio import activity
from threadline.activities.tools import Tool, current_call
from threadline.channels.delivery import (
    interrupt_turn,
)
from threadline.channels.toolkit.room import Room, run_turn
from threadline.channels.toolkit.schema import (
    CALL_ATTEMPTS,
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_MAX_DEPTH,
    DEPTH_KEY,
    TOOLKIT_SCHEMA,
    ToolkitError,
    ToolTurnFailed,
    check_call,
    task_thread_id,
)
from threadline.models.limits import validate_name
from threadline.models.spec import AgentSpec
from threadline.models.thread import AgentRef, Turn
from threadline.workflows.toolkit import tool_name_for

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
    return [call_tool(spec, parse_use_toolkit(value)) for value in spec.use_toolkits]


def call_tool(spec: AgentSpec, use: UseToolkit) -> Tool:
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
