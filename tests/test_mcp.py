"""MCP both ways, with the official `mcp` SDK on the other side: an SDK-built server's tools given to an agent
(`--mcp`), and an SDK client calling the agent's toolkit tool served over MCP (`--mcp-serve-port`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import uvicorn
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from temporalio.client import Client as TemporalClient
from threadline.activities.mcp_tools import McpConfigError, McpUnavailable, load_mcp_tools, parse_mcp
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn
from threadline.channels.registry import adapters_for
from threadline.models.spec import McpSettings
from threadline.models.thread import Turn
from threadline.worker import run_agent

from tests.cli_helpers import run_cli
from tests.fake_openai import FakeResponse
from tests.runtime_support import items_of_turn
from tests.temporal_server import free_port


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def sdk_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An MCP server built with the SDK (streamable HTTP) on a free port; yields its URL and the headers it saw."""
    server = MCPServer(name="calc", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        if b == 0:
            raise ToolError("division by zero")
        return a / b

    app = server.streamable_http_app()
    seen: list[dict[str, str]] = []

    async def recording(scope, receive, send):
        if scope["type"] == "http":
            seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    port = free_port()
    uv = _Server(uvicorn.Config(recording, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/mcp", seen
    finally:
        uv.should_exit = True
        await asyncio.wait_for(task, 10)


def test_mcp_option_grammar():
    server = parse_mcp("https://mcp.example.com/mcp?x=1#bearer=TOKEN&header.X-Team=TEAM&prefix=ex_&timeout=30")
    assert server.url == "https://mcp.example.com/mcp?x=1" and server.prefix == "ex_" and server.timeout == 30
    assert server.headers({"TOKEN": "t0k", "TEAM": "blue"}) == {"X-Team": "blue", "Authorization": "Bearer t0k"}
    with pytest.raises(McpConfigError, match="environment variable TOKEN is not set"):
        server.headers({"TEAM": "blue"})
    for bad in ("mcp.example.com", "ws://x/mcp", "http://x/mcp#colour=red", "http://x/mcp#timeout=0"):
        with pytest.raises(McpConfigError):
            parse_mcp(bad)


async def test_agent_calls_an_sdk_server_tool(temporal_client: TemporalClient, agent_spec, agent_worker, fake_model,
                                              monkeypatch):
    monkeypatch.setenv("CALC_TOKEN", "s3cret")
    async with sdk_server() as (url, seen):
        spec = agent_spec.model_copy(update={"mcp": McpSettings(servers=[f"{url}#bearer=CALC_TOKEN&prefix=calc_"])})
        await agent_worker(spec)
        thread_id = spec.ref.thread_id(new_thread_name())
        fake_model.enqueue(
            FakeResponse.tool_calls([("calc_add", {"a": 2, "b": 3}), ("calc_divide", {"a": 1, "b": 0})]),
            FakeResponse.text("2 + 3 = 5"),
        )
        reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="add"))
    assert reply.status == "completed" and reply.text == "2 + 3 = 5"
    tools = {t["function"]["name"]: t["function"] for t in fake_model.requests[0].tools}
    assert tools["calc_add"]["description"] == "Add two integers."
    assert tools["calc_add"]["parameters"]["properties"].keys() == {"a", "b"}
    results = {i.tool_name: i for i in items_of_turn(spec.room, thread_id, reply.turn_id) if i.type == "tool_result"}
    assert results["calc_add"].text == "5" and results["calc_add"].data["ok"]
    assert results["calc_divide"].text.startswith("error: ") and "division by zero" in results["calc_divide"].text
    assert seen and all(h.get("authorization") == "Bearer s3cret" for h in seen)


async def test_mcp_server_down_at_start_up(temporal_client: TemporalClient, agent_spec, capsys):
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(McpUnavailable, match=f"MCP server {url} is not reachable.*--mcp-optional"):
        await load_mcp_tools([url], {})
    assert await load_mcp_tools([url], {}, optional=True) == []
    assert f"warning: MCP server {url} is not reachable" in capsys.readouterr().err
    # The agent does not start, and the CLI reports it as a run-time failure (exit 1).
    spec = agent_spec.model_copy(update={"mcp": McpSettings(servers=[url])})
    with pytest.raises(McpUnavailable) as raised:
        await run_agent(temporal_client, spec, asyncio.Event())
    from threadline.cli.process import _agent_error

    error = _agent_error(raised.value)
    assert error.exit_code == 1 and "is not reachable" in error.message


async def test_toolkit_tools_are_served_over_mcp(temporal_client: TemporalClient, agent_spec, fake_model):
    port = free_port()
    spec = agent_spec.model_copy(update={"channels": ["toolkit:helper"],
                                         "mcp": McpSettings(serve_port=port)})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_agent(temporal_client, spec, stop, ready, channels=adapters_for(spec.channels)))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            listing = await asyncio.wait_for(client.list_tools(), 20)
            [tool] = listing.tools
            assert tool.name == "run_helper_task"
            assert tool.input_schema["required"] == ["prompt"]
            assert {"prompt", "thread_id", "path"} <= set(tool.input_schema["properties"])
            assert set(tool.output_schema["properties"]) == {"text", "thread_id", "turn_id"}
            result = await asyncio.wait_for(client.call_tool("run_helper_task", {"prompt": "hello there"}), 60)
            assert not result.is_error
            answer = result.structured_content
            jsonschema.validate(answer, tool.output_schema)
            assert answer["text"] == "echo: hello there" == result.content[0].text  # text for text-only clients
            # The thread id continues the conversation.
            again = await asyncio.wait_for(
                client.call_tool("run_helper_task", {"prompt": "and again", "thread_id": answer["thread_id"]}), 60)
            assert again.structured_content["thread_id"] == answer["thread_id"]
            texts = [i.text for i in items_of_turn(spec.room, answer["thread_id"], _last_turn(spec, answer))]
            assert "and again" in texts
            bad = await client.call_tool("run_helper_task", {"prompt": "x", "path": "a", "thread_id": "b"})
            assert bad.is_error and "name different threads" in bad.content[0].text
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def _last_turn(spec, answer) -> str:
    from threadline.activities.thread_store import ThreadStore

    return ThreadStore.for_room(spec.room).items(answer["thread_id"])[-1].turn_id


def test_serving_mcp_beyond_loopback_needs_a_token() -> None:
    refused = run_cli("process", "join", "--room", "r", "--agent-name", "a", "--model", "offline", "--channel",
                      "toolkit:helper", "--mcp-serve-port", "0", "--mcp-serve-host", "0.0.0.0")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == (
        "error: --mcp-serve-host 0.0.0.0 is reachable from other machines, so the MCP server needs a bearer token: "
        "pass --mcp-serve-token TOKEN (or set THREADLINE_MCP_SERVE_TOKEN), or bind to 127.0.0.1")


async def test_the_mcp_server_checks_its_token(temporal_client: TemporalClient, agent_spec, fake_model):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    port = free_port()
    spec = agent_spec.model_copy(update={"channels": ["toolkit:helper"],
                                         "mcp": McpSettings(serve_port=port, serve_token="s3cret")})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_agent(temporal_client, spec, stop, ready, channels=adapters_for(spec.channels)))
    await asyncio.wait_for(ready.wait(), 30)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx2.AsyncClient() as plain:
            anonymous = await plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                         headers={"Accept": "application/json, text/event-stream"})
        assert anonymous.status_code == 401
        http = create_mcp_http_client(headers={"Authorization": "Bearer s3cret"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            result = await asyncio.wait_for(client.call_tool("run_helper_task", {"prompt": "hi"}), 60)
            assert result.structured_content["text"] == "echo: hi"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
