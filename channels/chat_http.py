"""The chat channel over HTTP: a JSON API with Server-Sent Events per thread, the web chat page, and an
OpenAI-compatible endpoint, served by the agent process (starlette on uvicorn, on the agent's event loop).

    GET    /api/config                          agent, room, threading mode, Temporal UI base URL
    GET    /api/threads                         the agent's threads (name, status, modified), newest first
    POST   /api/threads                         a new thread (threading mode default-new) or the `main` thread
    GET    /api/threads/{id}                    one thread, with its workflow status (running, queued turns)
    PATCH  /api/threads/{id}                    rename: {"name": ...}
    DELETE /api/threads/{id}                    archive (hidden from the list; items stay)
    GET    /api/threads/{id}/items              items, newest page first: ?limit=50&before=SEQ
    POST   /api/threads/{id}/turns              {"text": ...} → 202 accepted with the turn id; ?wait=true → the reply
    POST   /api/threads/{id}/steer              {"text": ...}: input for the running turn (a new turn when none runs)
    POST   /api/threads/{id}/interrupt          cancels the running turn
    GET    /api/threads/{id}/events             SSE: turn, item, delta, retry, tool, status, error (see chat_feed)
    GET    /v1/models, POST /v1/chat/completions  OpenAI-compatible (thread from / in the X-Thread-Id header)

`{id}` is the thread's id (`room/.threads/agent/name`, slashes as they are) or its short name. With a token, every
request but the page itself (`/`, `/static/...`) needs `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import uvicorn
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from threadline.activities.stores import open_stream_log, open_thread_store
from threadline.channels.base import ChannelAdapter, ChannelContext
from threadline.channels.chat_feed import Cursor, FeedEvent, StatusWatcher, current_cursor, follow, read_after
from threadline.channels.delivery import (
    deliver_turn,
    interrupt_turn,
    new_thread_name,
    new_turn_id,
    steer_turn,
    submit_turn,
)
from threadline.channels.http_auth import BearerAuth, is_loopback
from threadline.channels.http_auth import json_error as _error  # noqa: I001 - one error body for every API
from threadline.models import (
    DEFAULT_HTTP_PORT,
    MAX_TURN_TEXT_BYTES,
    AgentSpec,
    HttpSettings,
    PayloadTooLarge,
    Reply,
    Steer,
    ThreadItem,
    Turn,
)

log = logging.getLogger("threadline.chat_http")

WEB_DIR = Path(__file__).resolve().parent / "web"
TOKEN_ENV = "THREADLINE_HTTP_TOKEN"
DEFAULT_TEMPORAL_UI = "http://localhost:8233"
PUBLIC_PATHS = ("/", "/index.html", "/favicon.ico", "/healthz")
MAX_EVENT_STREAMS = 500
"""Open `/events` streams per agent process; more get 503 (each holds a connection and a share of the poller)."""
MAX_REQUEST_BYTES = 4 * MAX_TURN_TEXT_BYTES
"""Room for a turn at its size limit with JSON escaping; larger bodies are refused before they are read."""


class HttpConfigError(ValueError):
    """Settings the HTTP server refuses to start with; the message says what to change."""


def check_settings(settings: HttpSettings) -> None:
    if settings.serve and not is_loopback(settings.host) and not settings.token:
        raise HttpConfigError(
            f"--http-host {settings.host} is reachable from other machines, so the chat API needs a bearer token: "
            f"pass --http-token TOKEN (or set {TOKEN_ENV}), or bind to 127.0.0.1"
        )


def temporal_ui_base(spec: AgentSpec) -> str | None:
    """`--temporal-ui-url`, else the embedded server's UI when Temporal runs on this machine."""
    if spec.http.temporal_ui_url:
        return spec.http.temporal_ui_url.rstrip("/")
    address = spec.temporal_address
    if address is None or address.rpartition(":")[0] in ("localhost", "127.0.0.1", "[::1]"):
        return DEFAULT_TEMPORAL_UI
    return None


# Request and response bodies.


class ThreadOut(BaseModel):
    thread_id: str
    name: str
    short: str = Field(description="the last part of the id, as `process use --thread-id` takes it")
    status: str
    channel: str = "chat"
    created_at: float = 0.0
    modified_at: float = 0.0
    items: int = 0
    archived: bool = False
    temporal_url: str | None = None
    running_turn_id: str | None = None
    queued_turn_ids: list[str] = Field(default_factory=list)


class ThreadList(BaseModel):
    threads: list[ThreadOut]


class CreateThread(BaseModel):
    name: str = Field("", max_length=200)
    main: bool | None = Field(None, description="the agent's `main` thread; default: as the threading mode says")


class Rename(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class ItemsPage(BaseModel):
    thread_id: str
    items: list[ThreadItem]
    has_more: bool
    cursor: str = Field(description="the SSE position right after these items: pass it as ?after= to /events")


class PostTurn(BaseModel):
    text: str = Field(min_length=1)
    turn_id: str | None = Field(None, min_length=1, max_length=200, description="idempotency key")
    sender: str = Field("user", min_length=1, max_length=200)


class TurnAccepted(BaseModel):
    thread_id: str
    turn_id: str
    status: Literal["accepted"] = "accepted"
    reply: Reply | None = None


class SteerIn(BaseModel):
    text: str = Field(min_length=1)
    turn_id: str | None = None
    sender: str = "user"


class InterruptIn(BaseModel):
    turn_id: str | None = None


class ConfigOut(BaseModel):
    agent: str
    room: str
    threading_mode: str
    model: str
    namespace: str
    temporal_ui_url: str | None
    auth: bool


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _openai_error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


def invalid(e: ValidationError) -> ApiError:
    """A model's validation error as the API's answer: 413 for content over the payload limits, else 422."""
    first = e.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, PayloadTooLarge):
        return ApiError(413, str(cause), "too_large")
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = str(first.get("msg")).removeprefix("Value error, ")
    return ApiError(422, f"{where}: {message}" if where else message, "invalid_body")


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        raise invalid(e) from e


class _BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, by Content-Length before reading and by counting while
    reading (chunked bodies), so a huge body is never held in memory."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, self._message(), "too_large")
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return (f"the request body is over the {self.limit:,} byte limit: put large content in room storage and "
                "send its path")

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        await _error(413, self._message(), "too_large")(scope, receive, send)


def _host_name(value: str) -> str:
    """`host:port`, `[::1]:port` or a bare host → the host name, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class _LoopbackOnly:
    """Without a token the API trusts whoever reaches it, which a loopback bind limits to this machine. A web page
    from elsewhere can still make the browser send requests there: a DNS-rebinding page (another Host), or a
    cross-site form or `text/plain` POST (another Origin, no JSON). Those are refused."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                await _error(*problem, "refused")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _problem(scope: Any) -> tuple[int, str] | None:
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get(b"host", "")
        if host and not is_loopback(_host_name(host)):
            return 403, f"Host {host!r} is not this machine: without --http-token the chat API answers only on loopback"
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return None
        origin = headers.get(b"origin")
        if origin is not None and not is_loopback(_host_name(urlsplit(origin).netloc or "invalid")):
            return 403, (f"a request from the web page at {origin} is refused: without --http-token only pages of "
                         "this server may change threads")
        body = headers.get(b"content-length", "0") != "0" or b"transfer-encoding" in headers
        kind = headers.get(b"content-type", "").split(";")[0].strip().lower()
        if scope["method"] == "POST" and body and kind != "application/json":
            return 415, f"Content-Type {kind or '(none)'!r} is refused: send the body as application/json"
        return None


class ChatApi:
    """The routes, over one agent's threads."""

    def __init__(self, client: Client, spec: AgentSpec, closing: asyncio.Event) -> None:
        self.client, self.spec, self.ref = client, spec, spec.ref
        self.closing = closing
        self.store = open_thread_store(spec.room, spec.thread_store_url)
        self.log = open_stream_log(spec.room, spec.thread_store_url)
        self.watcher = StatusWatcher(client, self.store)
        self.ui = temporal_ui_base(spec)
        self.open_streams = 0

    # Helpers.

    def thread_id(self, raw: str) -> str:
        value = raw.strip().strip("/")
        if not value or len(value) > 500:
            raise ApiError(404, "no such thread", "not_found")
        thread_id = self.ref.thread_id(value)
        info = self.store.thread(thread_id)
        mine = info.agent == self.ref.agent_name if info else thread_id.startswith(
            f"{self.ref.room}/{self.ref.threads_dir}/")
        if not mine:
            raise ApiError(404, f"no thread {value!r} of agent {self.ref.agent_name}", "not_found")
        return thread_id

    def temporal_url(self, thread_id: str) -> str | None:
        if self.ui is None:
            return None
        return f"{self.ui}/namespaces/{quote(self.spec.namespace, safe='')}/workflows/{quote(thread_id, safe='')}"

    def thread_out(self, thread_id: str, status: dict[str, Any] | None = None) -> ThreadOut:
        info = self.store.thread(thread_id)
        out = ThreadOut(
            thread_id=thread_id, name=info.name if info else "", short=thread_id.rsplit("/", 1)[-1],
            status=info.status if info else "idle", channel=info.channel if info else "chat",
            created_at=info.created_at if info else 0.0, modified_at=info.modified_at if info else 0.0,
            items=info.items if info else 0, archived=info.archived if info else False,
            temporal_url=self.temporal_url(thread_id),
        )
        if status:
            out.status = status["status"]
            out.running_turn_id = status.get("running_turn_id")
            out.queued_turn_ids = status.get("queued_turn_ids", [])
        return out

    def new_thread_id(self, main: bool | None) -> str:
        use_main = self.spec.threading_mode == "none" if main is None else main
        return self.ref.thread_id("main" if use_main else new_thread_name())

    def touch(self, thread_id: str, name: str = "") -> None:
        self.store.ensure_thread(thread_id, room=self.spec.room, agent=self.ref.agent_name, name=name)
        self.store.archive(thread_id, False)

    # The page.

    async def index(self, request: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def config(self, request: Request) -> Response:
        return JSONResponse(ConfigOut(
            agent=self.ref.agent_name, room=self.ref.room, threading_mode=self.spec.threading_mode,
            model=self.spec.model, namespace=self.spec.namespace, temporal_ui_url=self.ui,
            auth=bool(self.spec.http.token),
        ).model_dump())

    # Threads.

    async def list_threads(self, request: Request) -> Response:
        limit = _int(request.query_params.get("limit"), 100, 1, 1000)
        offset = _int(request.query_params.get("offset"), 0, 0, 10**9)
        archived = request.query_params.get("archived") in ("1", "true", "yes")
        infos = self.store.threads(agent=self.ref.agent_name, limit=limit, offset=offset, archived=archived)
        threads = [self.thread_out(i.thread_id) for i in infos]
        return JSONResponse(ThreadList(threads=threads).model_dump())

    async def create_thread(self, request: Request) -> Response:
        body: CreateThread = await _body(request, CreateThread)
        thread_id = self.new_thread_id(body.main)
        self.touch(thread_id, body.name)
        if body.name:
            self.store.rename(thread_id, body.name)
        return JSONResponse(self.thread_out(thread_id).model_dump(), status_code=201)

    async def get_thread(self, request: Request) -> Response:
        thread_id = self.thread_id(request.path_params["tid"])
        status = await self.watcher.status(thread_id)
        return JSONResponse(self.thread_out(thread_id, status).model_dump())

    async def rename_thread(self, request: Request) -> Response:
        thread_id = self.thread_id(request.path_params["tid"])
        body: Rename = await _body(request, Rename)
        self.store.ensure_thread(thread_id, room=self.spec.room, agent=self.ref.agent_name)
        self.store.rename(thread_id, body.name)
        return JSONResponse(self.thread_out(thread_id).model_dump())

    async def archive_thread(self, request: Request) -> Response:
        thread_id = self.thread_id(request.path_params["tid"])
        if not self.store.archive(thread_id):
            raise ApiError(404, "no such thread", "not_found")
        return JSONResponse(self.thread_out(thread_id).model_dump())

    async def items(self, request: Request) -> Response:
        thread_id = self.thread_id(request.path_params["tid"])
        limit = _int(request.query_params.get("limit"), 50, 1, 1000)
        before = request.query_params.get("before")
        before_seq = _int(before, 0, 0, 10**12) if before else None
        cursor = current_cursor(self.store, self.log, thread_id)
        items = self.store.items(thread_id, before_seq=before_seq, limit=limit + 1)
        has_more = len(items) > limit
        page = ItemsPage(thread_id=thread_id, items=items[-limit:], has_more=has_more, cursor=str(cursor))
        return JSONResponse(page.model_dump(mode="json"))

    # Turns.

    async def post_turn(self, request: Request) -> Response:
        thread_id = self.thread_id(request.path_params["tid"])
        body: PostTurn = await _body(request, PostTurn)
        try:
            turn = Turn(turn_id=body.turn_id or new_turn_id(), channel="chat", sender=body.sender, text=body.text)
        except ValidationError as e:
            raise invalid(e) from e
        self.touch(thread_id)
        if request.query_params.get("wait") in ("1", "true", "yes"):
            reply = await submit_turn(self.client, self.ref, thread_id, turn)
            return JSONResponse(TurnAccepted(thread_id=thread_id, turn_id=turn.turn_id, reply=reply)
                                .model_dump(mode="json"))
        await deliver_turn(self.client, self.ref, thread_id, turn)
        self.log.publish(thread_id, turn.turn_id, 0, "accepted", {"channel": "chat"})
        self.watcher.poke(thread_id)
        return JSONResponse(TurnAccepted(thread_id=thread_id, turn_id=turn.turn_id).model_dump(mode="json"),
                            status_code=202)

    async def steer(self, request: Request) -> Response:
        thread_id = self.thread_id(request.path_params["tid"])
        body: SteerIn = await _body(request, SteerIn)
        try:
            steer = Steer(text=body.text, turn_id=body.turn_id, sender=body.sender)
        except ValidationError as e:
            raise invalid(e) from e
        try:
            await steer_turn(self.client, thread_id, steer)
            mode = "steer"
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            # No workflow yet: nothing runs, so the text is a new turn.
            self.touch(thread_id)
            await deliver_turn(self.client, self.ref, thread_id,
                               Turn(turn_id=new_turn_id(), channel="chat", sender=body.sender, text=body.text))
            mode = "turn"
        self.watcher.poke(thread_id)
        return JSONResponse({"thread_id": thread_id, "delivered_as": mode}, status_code=202)

    async def interrupt(self, request: Request) -> Response:
        thread_id = self.thread_id(request.path_params["tid"])
        body: InterruptIn = await _body(request, InterruptIn)
        try:
            await interrupt_turn(self.client, thread_id, body.turn_id)
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            return JSONResponse({"thread_id": thread_id, "interrupted": False})
        self.watcher.poke(thread_id)
        return JSONResponse({"thread_id": thread_id, "interrupted": True}, status_code=202)

    async def events(self, request: Request) -> Response:
        thread_id = self.thread_id(request.path_params["tid"])
        if self.open_streams >= MAX_EVENT_STREAMS:
            raise ApiError(503, f"this agent already serves {MAX_EVENT_STREAMS} event streams: try again later",
                           "too_many_streams")
        cursor = Cursor.parse(request.headers.get("last-event-id")) or Cursor.parse(
            request.query_params.get("after")) or current_cursor(self.store, self.log, thread_id)

        async def stream() -> AsyncIterator[str]:
            self.open_streams += 1
            try:
                yield f"retry: 1000\nid: {cursor}\nevent: hello\ndata: {json.dumps({'thread_id': thread_id})}\n\n"
                async for event in follow(self.store, self.log, self.watcher, thread_id, cursor, self.closing):
                    yield ": keep-alive\n\n" if event is None else event.sse()
            finally:
                self.open_streams -= 1

        return StreamingResponse(stream(), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Thread-Id": thread_id,
        })

    # OpenAI-compatible.

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.ref.agent_name, "object": "model", "created": 0, "owned_by": f"threadline:{self.ref.room}"}

    async def chat_completions(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError:
            return _openai_error(400, "the body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _openai_error(400, "the body must be a JSON object", "invalid_request_error")
        model = body.get("model")
        if model != self.ref.agent_name:
            return _openai_error(404, f"The model `{model}` does not exist: this server has `{self.ref.agent_name}`",
                                 "invalid_request_error", "model_not_found")
        text = _last_user_text(body.get("messages"))
        if not text:
            return _openai_error(400, "messages has no user message with text", "invalid_request_error")
        header = request.headers.get("x-thread-id")
        try:
            thread_id = self.thread_id(header) if header else self.new_thread_id(None)
        except ApiError as e:
            return _openai_error(404, e.message, "invalid_request_error", "thread_not_found")
        try:
            turn = Turn(turn_id=new_turn_id(), channel="chat", sender=str(body.get("user") or "openai-client"),
                        text=text)
        except ValidationError as e:
            problem = invalid(e)
            return _openai_error(problem.status if problem.status == 413 else 400, problem.message,
                                 "invalid_request_error")
        self.touch(thread_id)
        headers = {"X-Thread-Id": thread_id, "X-Turn-Id": turn.turn_id}
        completion_id = f"chatcmpl-{turn.turn_id.removeprefix('turn-')}"
        created = int(time.time())
        if not body.get("stream"):
            reply = await submit_turn(self.client, self.ref, thread_id, turn)
            if reply.status == "failed":
                return _openai_error(502, f"the turn failed: {reply.error}", "server_error", "turn_failed")
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created, "model": self.ref.agent_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": _usage(reply),
            }, headers=headers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = self._completion_stream(thread_id, turn, completion_id, created, include_usage)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _completion_stream(
        self, thread_id: str, turn: Turn, completion_id: str, created: int, include_usage: bool
    ) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
            payload: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": self.ref.agent_name,
                "choices": [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                payload["usage"] = usage
            return "data: " + json.dumps(payload, ensure_ascii=False) + "\n\n"

        cursor = current_cursor(self.store, self.log, thread_id)
        live = LiveText(turn.turn_id)
        replying = asyncio.create_task(submit_turn(self.client, self.ref, thread_id, turn))
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                done = replying.done()
                for event in read_after(self.store, self.log, thread_id, cursor):
                    cursor = event.cursor or cursor
                    text = live.apply(event)
                    if text:
                        yield chunk({"content": text})
                if done:
                    break
                await asyncio.sleep(0.02)
            reply = replying.result()
            sent = live.step_text or live.final_sent
            if reply.status == "completed" and reply.text.startswith(sent) and reply.text != sent:
                yield chunk({"content": reply.text[len(sent):]})  # deltas the stream log no longer had
            if reply.status == "failed":
                error = {"message": f"the turn failed: {reply.error}", "type": "server_error", "code": "turn_failed"}
                yield "data: " + json.dumps({"error": error}) + "\n\n"
            else:
                yield chunk({}, "stop")
                if include_usage:
                    yield chunk({}, usage=_usage(reply))
            yield "data: [DONE]\n\n"
        finally:
            if not replying.done():
                replying.cancel()  # the client left; the turn goes on in Temporal


class LiveText:
    """What a client shows of one turn's streamed text: a retried model call drops its aborted attempt's text (a
    note stands in for text already sent), and each model call of the turn starts at attempt 1 again."""

    RETRY_NOTE = "\n\n(the model call was retried; its answer starts again)\n\n"

    def __init__(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self.attempt = 1
        self.step_text = ""
        self.final_sent = ""
        """The text sent for the turn's last model call so far."""

    def apply(self, event: FeedEvent) -> str:
        """The text to send for this event ('' for none)."""
        data = event.data
        if data.get("turn_id") != self.turn_id:
            return ""
        if event.event == "delta" and data["attempt"] >= self.attempt:
            self.attempt = data["attempt"]
            self.step_text += data["text"]
            return data["text"]
        if event.event == "retry":
            note = self.RETRY_NOTE if self.step_text else ""
            self.attempt, self.step_text = data["attempt"], ""
            return note
        if event.event == "item" and data.get("type") == "assistant":
            sent = self.step_text
            self.attempt, self.step_text, self.final_sent = 1, "", sent
            if data.get("tool_calls"):
                return "\n\n" if sent and not sent.endswith("\n") else ""
        return ""


def _usage(reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens,
            "total_tokens": reply.usage.total_tokens}


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            return ""
    return ""


def _int(value: str | None, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as e:
        raise ApiError(422, f"{value!r} is not a number", "invalid_query") from e
    return min(max(number, low), high)


def build_app(client: Client, spec: AgentSpec, closing: asyncio.Event) -> Any:
    api = ChatApi(client, spec, closing)
    tid = "/api/threads/{tid:path}"

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                return _error(e.status, e.message, e.code)
            except RPCError as e:
                log.warning("chat API: Temporal refused %s %s: %s", request.method, request.url.path, e)
                return _error(503, f"Temporal refused the request: {e.message}", "temporal_unavailable")
        return endpoint

    routes = [
        Route("/", guarded(api.index)),
        Route("/healthz", guarded(api.healthz)),
        Mount("/static", app=StaticFiles(directory=WEB_DIR), name="static"),
        Route("/api/config", guarded(api.config)),
        Route("/api/threads", guarded(api.list_threads), methods=["GET"]),
        Route("/api/threads", guarded(api.create_thread), methods=["POST"]),
        Route(tid + "/items", guarded(api.items), methods=["GET"]),
        Route(tid + "/events", guarded(api.events), methods=["GET"]),
        Route(tid + "/turns", guarded(api.post_turn), methods=["POST"]),
        Route(tid + "/steer", guarded(api.steer), methods=["POST"]),
        Route(tid + "/interrupt", guarded(api.interrupt), methods=["POST"]),
        Route(tid, guarded(api.get_thread), methods=["GET"]),
        Route(tid, guarded(api.rename_thread), methods=["PATCH"]),
        Route(tid, guarded(api.archive_thread), methods=["DELETE"]),
        Route("/v1/models", guarded(api.models), methods=["GET"]),
        Route("/v1/chat/completions", guarded(api.chat_completions), methods=["POST"]),
    ]
    app: Any = BearerAuth(Starlette(routes=routes), spec.http.token,
                          lambda path: path in PUBLIC_PATHS or path.startswith("/static/"))
    if not spec.http.token:
        app = _LoopbackOnly(app)
    return _BodyLimit(app, MAX_REQUEST_BYTES)


class _Server(uvicorn.Server):
    """uvicorn inside the agent process: the process's own signal handling stays in charge."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ChatHttpChannel(ChannelAdapter):
    """`--channel chat`: the HTTP API, SSE, web page and OpenAI endpoint, beside the agent's worker."""

    name = "chat"

    def __init__(self, value: str = "", *, settings: HttpSettings | None = None) -> None:
        self.settings = settings
        self.url: str | None = None
        self.bound = asyncio.Event()

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        settings = self.settings or context.spec.http
        if not settings.serve:
            await stop.wait()
            return
        check_settings(settings)
        spec = context.spec.model_copy(update={"http": settings})
        port = DEFAULT_HTTP_PORT if settings.port is None else settings.port
        try:
            sock = _bind(settings.host, port)
        except OSError as e:
            where = f"{settings.host}:{port}"
            if settings.port is None:
                _say(f"chat over HTTP: {where} is taken ({e.strerror}), so this process serves no HTTP; another "
                     "agent process may serve it, or pass --http-port")
                await stop.wait()
                return
            raise HttpConfigError(f"cannot serve chat over HTTP on {where}: {e.strerror or e}; "
                                  "pick another --http-port") from e
        bound_port = sock.getsockname()[1]
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.url = f"http://{host}:{bound_port}/"
        closing = asyncio.Event()
        config = uvicorn.Config(build_app(context.client, spec, closing), log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=5, proxy_headers=False)
        server = _Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        self.bound.set()
        _say(f"chat over HTTP: {self.url}" + (" (bearer token required)" if settings.token else ""))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopping, serving], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            # Event streams end now; uvicorn closes in the background, so the agent's worker starts its own
            # graceful shutdown at once (as it does without this channel) instead of polling on meanwhile.
            closing.set()
            server.should_exit = True
            serving.add_done_callback(lambda _: sock.close())
            _CLOSING.add(serving)
            serving.add_done_callback(_CLOSING.discard)
        if serving.done() and not stop.is_set():
            serving.result()
            raise HttpConfigError(f"the chat HTTP server on {self.url} stopped on its own")


_CLOSING: set[asyncio.Task[None]] = set()
"""uvicorn servers still closing after their channel returned (kept referenced until they are done)."""


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
