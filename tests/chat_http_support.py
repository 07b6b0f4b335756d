"""Helpers for the chat-over-HTTP tests: an agent with its HTTP channel in this process, and an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from temporalio.client import Client
from threadline.channels.chat_http.app import ChatHttpChannel
from threadline.models.spec import AgentSpec, HttpSettings
from threadline.worker import run_agent


@dataclass
class ChatServer:
    spec: AgentSpec
    url: str
    token: str | None
    stop: asyncio.Event
    task: asyncio.Task[None]
    openai_clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(), timeout=30, **kwargs)

    def openai_client(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        """An OpenAI client of the server's /v1, closed with the server: left to the garbage collector, its close
        runs on whatever loop is current then (once a workflow's, which the SDK refuses, noisily)."""
        client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0)
        self.openai_clients.append(client)
        return client


@contextlib.asynccontextmanager
async def chat_server(client: Client, spec: AgentSpec, *, token: str | None = None,
                      host: str = "127.0.0.1") -> AsyncIterator[ChatServer]:
    channel = ChatHttpChannel(settings=HttpSettings(host=host, port=0, token=token))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_agent(client, spec, stop, ready, channels=[channel]))
    try:
        bound = asyncio.ensure_future(channel.bound.wait())
        await asyncio.wait([bound, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the agent or its HTTP server failed: show why
        assert ready.is_set() and channel.bound.is_set(), "the agent's HTTP server did not start in 30 s"
        assert channel.url is not None
        server = ChatServer(spec, channel.url.rstrip("/"), token, stop, task)
        try:
            yield server
        finally:
            await asyncio.gather(*(c.close() for c in server.openai_clients))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


@dataclass
class SseEvent:
    event: str
    data: dict[str, Any]
    id: str | None


@dataclass
class SseReader:
    """Reads one SSE response into `events` in the background."""

    response: httpx.Response
    events: list[SseEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_id: str | None = None

    async def run(self) -> None:
        fields: dict[str, str] = {}
        async for line in self.response.aiter_lines():
            if line == "":
                if "event" in fields or "data" in fields:
                    if "id" in fields:
                        self.last_id = fields["id"]
                    self.events.append(SseEvent(fields.get("event", "message"), json.loads(fields.get("data", "{}")),
                                                fields.get("id")))
                    self.changed.set()
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")

    async def wait_for(self, predicate, timeout: float = 30) -> None:  # noqa: ANN001
        async def waiting() -> None:
            while not predicate(self.events):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(waiting(), timeout)


@contextlib.asynccontextmanager
async def sse(http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None) -> AsyncIterator[SseReader]:
    async with http.stream("GET", path, headers=headers or {}, timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200, await response.aread()
        reader = SseReader(response)
        task = asyncio.create_task(reader.run())
        try:
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def deltas(events: list[SseEvent], turn_id: str) -> str:
    """The turn's text as a client shows it: deltas, minus those of an attempt a retry aborted."""
    text, attempt = "", 1
    for e in events:
        if e.data.get("turn_id") != turn_id:
            continue
        if e.event == "retry":
            text, attempt = "", e.data["attempt"]
        elif e.event == "delta" and e.data["attempt"] >= attempt:
            text += e.data["text"]
        elif e.event == "item" and e.data["type"] == "assistant" and e.data["tool_calls"]:
            text, attempt = "", 1
    return text


def ended(turn_id: str):  # noqa: ANN201
    return lambda events: any(e.event == "turn" and e.data.get("phase") == "ended" and e.data["turn_id"] == turn_id
                              for e in events)
