"""Tools an agent can call: built-ins, room storage tools, and typed Python functions named with `--tool`.

A tool answers a mistake the model can fix (a bad path, a refused URL) with a result starting `error:`; such a
result is recorded as a failed call. An exception is retried per the tool's policy and, after the last attempt,
becomes such an error result too."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fnmatch
import importlib
import inspect
import json
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

from pydantic import ConfigDict, ValidationError, create_model
from threadline.activities.storage import MountedStorage, RoomStorage, StoragePathError
from threadline.models.thread import ToolCallInput

current_call: ContextVar[ToolCallInput] = ContextVar("current_call")
"""The call being run, for tools that need to know their thread and place in it (set by the run_tool activity)."""


def idempotency_key() -> str:
    """The running tool call's idempotency key, `<thread id>:<seq>`: the same on every attempt of one call (a retry
    after a timeout or a dead worker), different for every other call. A tool with side effects records it with
    what it did and skips what it finds already done. Outside a tool call: LookupError."""
    call = current_call.get()
    return f"{call.thread_id}:{call.seq}"


class ToolLoadError(ValueError):
    """A `--tool` reference that cannot be turned into a tool."""


class ToolArgumentsError(ValueError):
    """Arguments from the model that do not match the tool's schema."""


SYNC_TOOL_THREADS = 32
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def run_blocking(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Runs a plain function off the event loop, in a daemon thread of its own, at most SYNC_TOOL_THREADS at once.

    Python cannot stop a thread: one that hangs past its tool's timeout runs on until the function returns, and
    keeps its slot until then, so hung calls are bounded (later calls wait for a slot, and time out) and never keep
    the process from exiting (daemon threads, unlike an executor's, are not joined at exit)."""
    loop = asyncio.get_running_loop()
    slots = _slots.setdefault(loop, asyncio.Semaphore(SYNC_TOOL_THREADS))
    await slots.acquire()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            settle, value = future.set_result, context.run(fn, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            settle, value = future.set_exception, e

        def done() -> None:
            slots.release()
            if not future.done():
                settle(value)

        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(done)

    threading.Thread(target=target, name=f"threadline-tool-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return await future


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    timeout_seconds: float = 60.0
    max_attempts: int = 3
    calls_agent: bool = False
    """The call is a turn of another agent: the thread runs it in a child workflow, linked in the Temporal UI."""
    requires_approval: bool = False
    """A person approves each call first (`fn.requires_approval = True`, or `--require-approval NAME`)."""
    local: bool = False
    """Instant and in-process (a built-in that reads a clock, `fn.local = True`): the thread runs it as a local
    activity, in the workflow task that asked for it, which saves the activity's task round trip and a workflow task
    (about 40 ms a call). A steer or update to the thread waits until it returns."""
    source: ClassVar[str] = "python"
    """What `--require-approval SOURCE:*` matches besides the name (`mcp:*` for every MCP tool)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_arguments_model", _arguments_model(self.name, self.fn))

    @property
    def parameters(self) -> dict[str, Any]:
        schema = self._arguments_model.model_json_schema()  # type: ignore[attr-defined]
        schema.pop("title", None)
        return schema

    def openai_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    async def call(self, arguments: str) -> str:
        try:
            raw = json.loads(arguments or "{}")
            parsed = self._arguments_model.model_validate(raw)  # type: ignore[attr-defined]
        except (json.JSONDecodeError, ValidationError) as e:
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {e}") from e
        kwargs = {k: getattr(parsed, k) for k in type(parsed).model_fields}
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(**kwargs)
        else:
            # A plain function may block (files, network, CPU): off the event loop, so heartbeats and other
            # activities of the worker go on meanwhile.
            result = await run_blocking(self.fn, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        return result if isinstance(result, str) else json.dumps(result, default=str)


def _arguments_model(name: str, fn: Callable[..., Any]) -> Any:
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolLoadError(f"tool {name}: *args and **kwargs cannot be described to a model")
        annotation = param.annotation if param.annotation is not inspect.Parameter.empty else str
        default = param.default if param.default is not inspect.Parameter.empty else ...
        fields[param.name] = (annotation, default)
    return create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)


def summarize_call(name: str, arguments: str) -> str:
    """A one-line description of a tool call for the Temporal UI and terminal status lines."""
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return name
    first = next((v for v in args.values() if isinstance(v, (str, int, float))), None) if isinstance(args, dict) else None
    text = f"{name} {first}" if first is not None else name
    return text if len(text) <= 80 else text[:79] + "…"


def current_time() -> str:
    """Returns the current date and time (ISO 8601) in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def storage_tools(storage: RoomStorage | MountedStorage, *, read_only: bool = False) -> list[Tool]:
    # Off the event loop: the storage may be object storage across the network. A bad path or a missing file is
    # the model's mistake: it gets the error at once instead of after retries.
    async def storage_write(path: str, content: str) -> str:
        try:
            size = await asyncio.to_thread(storage.write, path, content)
        except StoragePathError as e:
            return f"error: {e}"
        return f"wrote {size} bytes to {path}"

    async def storage_read(path: str) -> str:
        try:
            return await asyncio.to_thread(storage.read_text, path)
        except (StoragePathError, FileNotFoundError) as e:
            return f"error: {e}"

    async def storage_list(path: str = "") -> str:
        try:
            return json.dumps(await asyncio.to_thread(storage.list, path))
        except StoragePathError as e:
            return f"error: {e}"

    writes = [] if read_only else [
        Tool("storage_write", "Write a text file to the room's shared storage (path relative to the room).", storage_write)]
    return [
        *writes,
        Tool("storage_read", "Read a text file from the room's shared storage.", storage_read),
        Tool("storage_list", "List files in a folder of the room's shared storage ('' for the top).", storage_list),
    ]


def load_tool(reference: str) -> Tool:
    """`package.module:function` → a tool whose JSON schema comes from the function's signature."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ToolLoadError(f"--tool {reference!r}: expected the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ToolLoadError(f"--tool {reference!r}: cannot import {module_name}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ToolLoadError(f"--tool {reference!r}: {module_name} has no function {attr}")
    doc = inspect.getdoc(fn) or f"Run {attr}."
    return Tool(
        name=attr,
        description=doc.strip().splitlines()[0],
        fn=fn,
        timeout_seconds=float(getattr(fn, "timeout_seconds", 60.0)),
        max_attempts=int(getattr(fn, "max_attempts", 3)),
        requires_approval=bool(getattr(fn, "requires_approval", False)),
        local=bool(getattr(fn, "local", False)),
    )


class Toolbox:
    def __init__(self, tools: list[Tool]) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self.tools:
                raise ToolLoadError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self._schemas: list[dict[str, Any]] | None = None

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def openai_schemas(self) -> list[dict[str, Any]]:
        """Built once: every model call sends them, and pydantic's schema generation is not free."""
        if self._schemas is None:
            self._schemas = [t.openai_schema() for t in self.tools.values()]
        return self._schemas

    def needs_approval(self, name: str, patterns: Sequence[str]) -> bool:
        """The tool asks for it, or a `--require-approval` glob matches its name (`mcp:NAME` for MCP tools)."""
        tool = self.tools.get(name)
        names = [name, f"{tool.source}:{name}"] if tool is not None else [name]
        return (tool is not None and tool.requires_approval) or any(
            fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def new_uuid() -> str:
    """Returns a new random UUID (version 4)."""
    return str(uuid.uuid4())


def build_toolbox(
    *, storage: RoomStorage | MountedStorage | None, tool_references: list[str], extra_tools: Sequence[Tool] = (),
    time_tool: bool = True, uuid_tool: bool = False, read_only_storage: bool = False,
) -> Toolbox:
    """Built-ins, storage tools, `--tool` functions, then `extra_tools` (e.g. `--use-toolkit` calls)."""
    tools = [Tool("current_time", "Returns the current date and time (ISO 8601, UTC).", current_time, 10.0,
                  local=True)] \
        if time_tool else []
    if uuid_tool:
        tools.append(Tool("new_uuid", "Returns a new random UUID.", new_uuid, 10.0, local=True))
    if storage is not None:
        tools += storage_tools(storage, read_only=read_only_storage)
    tools += [load_tool(ref) for ref in tool_references]
    tools += list(extra_tools)
    return Toolbox(tools)
