"""What a toolkit is to its callers: the tool's JSON schema, its argument checks, errors, and the thread a task runs on."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from threadline.models.limits import MAX_TURN_TEXT_BYTES, PayloadTooLarge, check_size
from threadline.models.thread import AgentRef, Reply
from threadline.models.toolkit import (
    ToolkitInfo,
    ToolkitListing,
    ToolkitTool,
)
from threadline.workflows.toolkit import tool_name_for

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
