"""The agent's toolkit tools served over MCP (`--mcp-serve-port P`, streamable HTTP at `http://HOST:P/mcp`).

Each `--channel toolkit:NAME` of the agent becomes the MCP tool `run_<name>_task` with the toolkit's schema (prompt,
path, thread_id, model, instructions). A call goes through `channels.toolkit.Room.invoke_tool`, exactly like a call
from another agent or app: one durable turn on the agent's thread (update-with-start), so a restart of the agent
mid-turn still answers. The result is JSON `{"text", "thread_id"}`; pass `thread_id` again to continue the thread.
A toolkit error (bad arguments, the turn failed) comes back as an MCP tool error with its message.

The server binds to `--mcp-serve-host` (default 127.0.0.1); the SDK's DNS-rebinding protection is on for loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import Annotated, Any

import uvicorn
from threadline.activities.mcp_tools import McpConfigError
from threadline.channels.base import ChannelAdapter, ChannelContext
from threadline.channels.http_auth import BearerAuth, is_loopback
from threadline.channels.toolkit.room import Room
from threadline.channels.toolkit.schema import ToolkitError
from threadline.models.spec import AgentSpec, McpSettings
from threadline.models.toolkit import ToolResult
from threadline.workflows.toolkit import tool_name_for

ONLINE_WAIT = 30.0
"""How long a call waits for the toolkit to be online (it is served by this very process)."""


def check_serve_settings(settings: McpSettings) -> None:
    """The MCP server has the agent's toolkit tools, which run turns: beyond loopback only for a bearer token."""
    if settings.serve_port is not None and not is_loopback(settings.serve_host) and not settings.serve_token:
        raise McpConfigError(
            f"--mcp-serve-host {settings.serve_host} is reachable from other machines, so the MCP server needs a "
            "bearer token: pass --mcp-serve-token TOKEN (or set THREADLINE_MCP_SERVE_TOKEN), or bind to 127.0.0.1"
        )


def toolkit_names(spec: AgentSpec) -> list[str]:
    return [c.partition(":")[2] for c in spec.channels if c.startswith("toolkit:")]


def build_mcp_server(context: ChannelContext) -> Any:
    from mcp.server.mcpserver import MCPServer

    spec = context.spec
    server = MCPServer(name=f"threadline-{spec.room}-{spec.agent_name}",
                       instructions=f"Tools of agent {spec.agent_name} in Threadline room {spec.room}.",
                       log_level="WARNING")
    room = Room(context.client, spec.room)

    for name in toolkit_names(spec):
        server.add_tool(
            _task_tool(room, name), name=tool_name_for(name),
            description=f"Send a task to {spec.agent_name} (toolkit {name} of room {spec.room}) and return its "
                        "reply (structured: text, thread_id, turn_id); pass thread_id again to continue that "
                        "conversation.",
            structured_output=True,
        )
    return server


def _task_tool(room: Room, toolkit: str) -> Any:
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import CallToolResult, TextContent

    tool = tool_name_for(toolkit)

    async def run_task(prompt: str, path: str | None = None, thread_id: str | None = None,
                       model: str | None = None, instructions: str | None = None) -> Any:
        """The reply as structured content (its schema: `ToolResult`) and, for clients that read only text, as
        the text itself; a failed turn or an unknown thread is an error result (`isError`) that says why."""
        arguments = {k: v for k, v in {"prompt": prompt, "path": path, "thread_id": thread_id, "model": model,
                                       "instructions": instructions}.items() if v is not None}
        try:
            result = await room.invoke_tool(toolkit, tool, arguments, timeout=ONLINE_WAIT, sender="mcp")
        except ToolkitError as e:
            raise ToolError(str(e)) from e
        return CallToolResult(content=[TextContent(type="text", text=result.text)],
                              structured_content=result.model_dump(mode="json"))

    run_task.__annotations__["return"] = Annotated[CallToolResult, ToolResult]
    return run_task


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class McpServeChannel(ChannelAdapter):
    """Serves the agent's toolkit tools over MCP while the agent runs."""

    name = "mcp"

    def __init__(self) -> None:
        self.url: str | None = None
        self.bound = asyncio.Event()

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        settings = context.spec.mcp
        assert settings.serve_port is not None
        if not toolkit_names(context.spec):
            _say("MCP: --mcp-serve-port serves the agent's toolkit tools, and it has no --channel toolkit:NAME; "
                 "nothing is served")
            await stop.wait()
            return
        check_serve_settings(settings)
        server = build_mcp_server(context)
        app = BearerAuth(server.streamable_http_app(host=settings.serve_host), settings.serve_token)
        family = socket.AF_INET6 if ":" in settings.serve_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.serve_host.strip("[]"), settings.serve_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise RuntimeError(f"cannot serve MCP on {settings.serve_host}:{settings.serve_port}: "
                               f"{e.strerror or e}; pick another --mcp-serve-port") from e
        port = sock.getsockname()[1]
        host = f"[{settings.serve_host}]" if ":" in settings.serve_host else settings.serve_host
        self.url = f"http://{host}:{port}/mcp"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=5, proxy_headers=False)
        uv = _Server(config)
        serving = asyncio.create_task(uv.serve(sockets=[sock]))
        self.bound.set()
        _say(f"MCP: {self.url} (tools: {', '.join(tool_name_for(n) for n in toolkit_names(context.spec))})")
        try:
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([stopping, serving], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        finally:
            uv.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            sock.close()


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
