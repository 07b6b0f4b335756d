"""MCP servers as tools (`--mcp URL`), with the official `mcp` SDK over streamable HTTP.

`--mcp URL[#OPTIONS]` (repeatable). The URL's fragment is never sent to the server, so it carries this client's
options, `&`-separated:

    bearer=ENV_VAR            header `Authorization: Bearer <value of ENV_VAR>`
    header.NAME=ENV_VAR       header `NAME: <value of ENV_VAR>` (repeatable)
    prefix=TEXT               prepend TEXT to the server's tool names (when two servers' names collide)
    timeout=SECONDS           bound of one tool call (default 120)

e.g. `--mcp 'https://mcp.example.com/mcp#bearer=EXAMPLE_TOKEN&prefix=ex_'`. Secrets stay in the environment, never
in the agent's spec or in Temporal. The server's tools are listed once at start-up (`load_mcp_tools`); a server that
cannot be reached then stops the agent with an error naming it, or, with `--mcp-optional`, is left out with a
warning. Each call of an MCP tool is one `run_tool` activity (own timeout, retries, one-line summary) that opens a
session, calls the tool and closes the session: nothing is held between calls, so a restarted MCP server or a
retried activity on another worker just works. A tool result flagged `isError` goes to the model as `error: ...`
(not retried); a connection failure is retried by the activity.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from threadline.activities.tools import Tool, ToolArgumentsError, ToolLoadError

DEFAULT_CALL_TIMEOUT = 120.0
CONNECT_TIMEOUT = 15.0


class McpConfigError(ToolLoadError):
    """An `--mcp` value that cannot work (bad URL, unknown option, missing environment variable)."""


class McpUnavailable(RuntimeError):
    """An MCP server that cannot be reached or listed at start-up."""


@dataclass(frozen=True)
class McpServer:
    url: str
    header_env: tuple[tuple[str, str], ...] = ()
    bearer_env: str | None = None
    prefix: str = ""
    timeout: float = DEFAULT_CALL_TIMEOUT

    def headers(self, env: Mapping[str, str]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, variable in self.header_env:
            headers[name] = _env_value(env, variable, self.url)
        if self.bearer_env:
            headers["Authorization"] = f"Bearer {_env_value(env, self.bearer_env, self.url)}"
        return headers


def _env_value(env: Mapping[str, str], variable: str, url: str) -> str:
    value = env.get(variable, "")
    if not value:
        raise McpConfigError(f"--mcp {url}: environment variable {variable} is not set")
    return value


def parse_mcp(value: str) -> McpServer:
    """`URL[#bearer=ENV&header.NAME=ENV&prefix=TEXT&timeout=SECONDS]` → McpServer; McpConfigError says what is wrong."""
    raw = value.strip()
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise McpConfigError(f"--mcp {value!r}: expected an http(s) URL of a streamable HTTP MCP endpoint, "
                             "e.g. http://localhost:8000/mcp")
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    headers: list[tuple[str, str]] = []
    bearer, prefix, timeout = None, "", DEFAULT_CALL_TIMEOUT
    for key, option in parse_qsl(parts.fragment, keep_blank_values=True):
        if key == "bearer" and option:
            bearer = option
        elif key.startswith("header.") and len(key) > 7 and option:
            headers.append((key[7:], option))
        elif key == "prefix":
            prefix = option
        elif key == "timeout":
            try:
                timeout = float(option)
            except ValueError:
                timeout = -1
            if not 0 < timeout <= 3600:
                raise McpConfigError(f"--mcp {value!r}: timeout must be 1..3600 seconds")
        else:
            raise McpConfigError(f"--mcp {value!r}: unknown option {key!r}; use bearer=ENV_VAR, "
                                 "header.NAME=ENV_VAR, prefix=TEXT or timeout=SECONDS after '#'")
    return McpServer(url=url, header_env=tuple(headers), bearer_env=bearer, prefix=prefix, timeout=timeout)


@contextlib.asynccontextmanager
async def mcp_session(server: McpServer, env: Mapping[str, str], timeout: float) -> AsyncIterator[Any]:
    """A connected `mcp.Client` for one server."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers=server.headers(env),
                                  timeout=httpx2.Timeout(CONNECT_TIMEOUT, read=max(timeout, CONNECT_TIMEOUT)))
    async with http, Client(streamable_http_client(server.url, http_client=http),
                            read_timeout_seconds=timeout) as client:
        yield client


@dataclass(frozen=True)
class McpTool(Tool):
    """A tool of an MCP server: its schema is the server's, its call a session to the server."""

    source: ClassVar[str] = "mcp"

    server: McpServer | None = field(default=None, compare=False)
    remote_name: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict, compare=False)
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.input_schema or {"type": "object", "properties": {}}

    async def call(self, arguments: str) -> str:
        try:
            parsed = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            raise ToolArgumentsError(f"invalid arguments for {self.name}: not JSON ({e.msg})") from e
        if not isinstance(parsed, dict):
            raise ToolArgumentsError(f"invalid arguments for {self.name}: expected a JSON object")
        assert self.server is not None
        async with mcp_session(self.server, self.env, self.server.timeout) as client:
            result = await client.call_tool(self.remote_name, parsed)
        text = result_text(result)
        return f"error: {text}" if getattr(result, "is_error", False) else text


def result_text(result: Any) -> str:
    """A CallToolResult's content as text: text blocks as they are, structured content as JSON, others named."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource":
            resource = block.resource
            parts.append(getattr(resource, "text", None) or f"[resource {resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{kind or 'unknown'} content: {getattr(block, 'mime_type', '') or 'not shown'}]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    return "\n".join(parts)


async def list_server_tools(server: McpServer, env: Mapping[str, str]) -> list[McpTool]:
    tools: list[McpTool] = []
    async with mcp_session(server, env, CONNECT_TIMEOUT) as client:
        cursor = None
        for _ in range(100):
            listing = await client.list_tools(cursor=cursor)
            for tool in listing.tools:
                tools.append(McpTool(
                    name=model_tool_name(f"{server.prefix}{tool.name}"),
                    description=(tool.description or f"{tool.name} (MCP tool of {server.url})").strip(),
                    fn=_not_called,
                    timeout_seconds=server.timeout + 15,
                    max_attempts=3,
                    server=server,
                    remote_name=tool.name,
                    input_schema=dict(tool.input_schema or {}),
                    env=env,
                ))
            cursor = listing.next_cursor
            if not cursor:
                break
    return tools


def model_tool_name(name: str) -> str:
    """OpenAI tool names are 1-64 of [A-Za-z0-9_-]; MCP names may have dots or slashes."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "tool"


def _not_called() -> str:
    raise AssertionError("McpTool.call talks to the server")


def check_mcp_options(servers: Sequence[str], env: Mapping[str, str]) -> list[McpServer]:
    """Parses every `--mcp` value and checks its environment variables (usage errors, before any connection)."""
    parsed = [parse_mcp(value) for value in servers]
    for server in parsed:
        server.headers(env)
    return parsed


async def load_mcp_tools(servers: Sequence[str], env: Mapping[str, str], optional: bool = False) -> list[Tool]:
    """The tools of every `--mcp` server, listed now. A server that cannot be listed raises McpUnavailable, or is
    skipped with a warning on stderr when `optional`."""
    tools: list[Tool] = []
    for server in check_mcp_options(servers, env):
        try:
            tools += await list_server_tools(server, env)
        except Exception as e:  # connection refused, HTTP errors, protocol errors, timeouts: all mean "down"
            reason = _reason(e)
            if not optional:
                raise McpUnavailable(
                    f"MCP server {server.url} is not reachable: {reason}; start it, fix --mcp, or pass "
                    "--mcp-optional to start without it"
                ) from e
            sys.stderr.write(f"warning: MCP server {server.url} is not reachable ({reason}); "
                             "the agent starts without its tools (--mcp-optional)\n")
            sys.stderr.flush()
    return tools


def _reason(e: BaseException) -> str:
    """The innermost useful message of an error (anyio wraps task group failures in exception groups)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    text = str(e) or e.__class__.__name__
    return text if len(text) < 300 else text[:299] + "…"
