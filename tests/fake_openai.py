"""A fake OpenAI-compatible HTTP server for tests (no internet needed).

It is a real HTTP/1.1 server (pure asyncio, no extra dependencies) bound to
127.0.0.1 on a free port, running its own event loop in a background daemon
thread, so it works from sync tests, async tests and from Temporal activities
running in other threads or processes. Every request is handled in its own
task: delays and blocked requests never hold up other requests.

Endpoints::

    POST /v1/chat/completions   non-streaming and streaming (SSE) replies
    GET  /v1/models             {"object": "list", "data": [...]}
    GET  /v1/models/{id}

Basic use::

    with FakeOpenAI() as fake:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="x")
        r = await client.chat.completions.create(model="m", messages=[...])

Default behaviour (no script, empty queue):

* reply ``"echo: <text of the last user message>"``;
* if the last user message has lines ``CALL_TOOL name {json}`` and no ``tool``
  message follows it, reply with one tool call per line (ids ``call_<n>``,
  numbered 1, 2, ... continuing after the tool calls already present in the
  conversation, so ids are deterministic and unique per conversation);
* once ``tool`` messages follow the last user message, reply
  ``"tools done: " + " | ".join(<tool message contents>)``.

Scripting (evaluated in this order for every valid chat request):

1. ``fake.enqueue(r1, r2, ...)`` - served one per request, in order;
2. ``fake.script(handler)`` - ``handler(req: FakeRequest) -> FakeResponse | None``
   (may also be ``async``); ``None`` means "default behaviour";
3. the default behaviour above.

Responses::

    FakeResponse.text("hi")
    FakeResponse.tool_calls([("get_weather", {"city": "Oslo"}), ...])
    FakeResponse.error(429, headers={"Retry-After": "1"})   # also 400/401/500...
    FakeResponse.delay(2.5, then=FakeResponse.text("slow"))  # then=None: default
    FakeResponse.block(event, then=None, timeout=None)        # until event.set()
    FakeResponse.drop()                                       # close connection
    FakeResponse.text("abc", chunk_delay=0.1, drop_after_chunks=2)  # streaming

Recording::

    fake.requests          # snapshot list[FakeRequest] of chat requests
    fake.count()           # or fake.count(lambda r: r.stream)
    fake.wait_for(lambda reqs: len(reqs) >= 2, timeout=10)   # sync, thread-safe
    await fake.wait_for_async(lambda: fake.in_flight == 0)   # from async tests
    fake.reset()           # clear requests, queue, script and errors

Exceptions raised by a script handler become a 500 reply and are collected in
``fake.errors`` so a test can assert there were none.

Manual use / benchmarks::

    python tests/fake_openai.py --port 8099 [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import http
import inspect
import itertools
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

__all__ = [
    "FakeOpenAI",
    "FakeRequest",
    "FakeResponse",
    "Handler",
    "default_response",
]

_CALL_TOOL_RE = re.compile(r"^\s*CALL_TOOL\s+(\S+)[ \t]*(.*?)\s*$")
_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    429: ("requests", "rate_limit_exceeded"),
}


def _content_text(content: Any) -> str:
    """Text of a message ``content`` (plain string or list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return json.dumps(content)


@dataclass
class FakeRequest:
    """One recorded chat-completions request."""

    index: int
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON (None if the body was not valid JSON)
    raw_body: bytes
    received_at: float  # time.time()
    received_monotonic: float
    # Filled in when the reply is sent (or the connection dropped).
    completed_at: float | None = None
    status: int | None = None
    response: FakeResponse | None = None

    @property
    def json(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    @property
    def model(self) -> str | None:
        return self.json.get("model")

    @property
    def messages(self) -> list[dict[str, Any]]:
        msgs = self.json.get("messages")
        return msgs if isinstance(msgs, list) else []

    @property
    def tools(self) -> list[dict[str, Any]]:
        return self.json.get("tools") or []

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.tools if isinstance(t, dict)]

    @property
    def stream(self) -> bool:
        return bool(self.json.get("stream"))

    @property
    def include_usage(self) -> bool:
        opts = self.json.get("stream_options") or {}
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None

    @property
    def last_user_index(self) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            m = self.messages[i]
            if isinstance(m, dict) and m.get("role") == "user":
                return i
        return None

    @property
    def last_user_text(self) -> str:
        i = self.last_user_index
        return "" if i is None else _content_text(self.messages[i].get("content"))

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """``tool`` role messages after the last user message."""
        start = self.last_user_index
        after = self.messages[(start + 1 if start is not None else 0) :]
        return [m for m in after if isinstance(m, dict) and m.get("role") == "tool"]

    @property
    def previous_tool_call_count(self) -> int:
        n = 0
        for m in self.messages:
            if isinstance(m, dict) and m.get("role") == "assistant":
                n += len(m.get("tool_calls") or [])
        return n


ToolCallSpec = tuple[str, Any] | tuple[str, Any, str]


@dataclass
class FakeResponse:
    """What to answer. Build with the classmethod helpers."""

    kind: Literal["reply", "error", "drop", "default"] = "reply"
    content: str | None = None
    # (name, args) or (name, args, id); args: dict (JSON-encoded) or str (sent as is).
    tool_calls_spec: Sequence[ToolCallSpec] | None = None
    status: int = 200
    body: Any = None  # error body: dict -> JSON, str/bytes -> raw
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering (non-blocking)
    block_on: threading.Event | None = None  # wait for this before answering
    block_timeout: float | None = None  # None = wait forever (until stop())
    chunk_delay: float = 0.0  # streaming: sleep between chunks
    drop_after_chunks: int | None = None  # streaming: close connection after N chunks
    finish_reason: str | None = None  # override ("stop"/"tool_calls"/"length"...)
    omit_finish_reason: bool = False  # streaming: end the stream without any finish reason
    usage: tuple[int, int] | None = None  # override (prompt_tokens, completion_tokens)
    model: str | None = None  # override reported model

    @classmethod
    def text(cls, content: str, **kw: Any) -> FakeResponse:
        return cls(kind="reply", content=content, **kw)

    @classmethod
    def tool_calls(
        cls, calls: Iterable[ToolCallSpec], content: str | None = None, **kw: Any
    ) -> FakeResponse:
        return cls(kind="reply", content=content, tool_calls_spec=list(calls), **kw)

    @classmethod
    def error(
        cls,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        message: str | None = None,
        **kw: Any,
    ) -> FakeResponse:
        if body is None:
            etype, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
            body = {
                "error": {
                    "message": message or f"fake error {status}",
                    "type": etype,
                    "param": None,
                    "code": code,
                }
            }
        return cls(kind="error", status=status, body=body, headers=dict(headers or {}), **kw)

    @classmethod
    def drop(cls, **kw: Any) -> FakeResponse:
        """Close the connection without answering (client sees a connection error)."""
        return cls(kind="drop", **kw)

    @classmethod
    def default(cls, **kw: Any) -> FakeResponse:
        """Fall through to the script handler / default behaviour."""
        return cls(kind="default", **kw)

    @classmethod
    def delayed(cls, seconds: float, then: FakeResponse | None = None) -> FakeResponse:
        """Sleep ``seconds`` (without blocking other requests), then answer ``then``.

        Also reachable as ``FakeResponse.delay(seconds, then=...)``; on instances
        ``resp.delay`` is the numeric field.
        """
        base = then if then is not None else cls(kind="default")
        return dataclasses.replace(base, delay=base.delay + seconds)

    @classmethod
    def block(
        cls, event: threading.Event, then: FakeResponse | None = None, timeout: float | None = None
    ) -> FakeResponse:
        """Hold the request until ``event`` is set (or ``timeout`` passes), then answer ``then``."""
        base = then if then is not None else cls(kind="default")
        return dataclasses.replace(base, block_on=event, block_timeout=timeout)


# ``delay`` is both a dataclass field (seconds) and, on the class, a helper:
# ``FakeResponse.delay(2, then=...)``. Instances keep the numeric field.
class _DelayDescriptor:
    def __get__(self, obj: FakeResponse | None, objtype: type | None = None) -> Any:
        if obj is None:
            return FakeResponse.delayed
        return obj.__dict__.get("delay", 0.0)

    def __set__(self, obj: FakeResponse, value: float) -> None:
        obj.__dict__["delay"] = value


FakeResponse.delay = _DelayDescriptor()  # type: ignore[assignment]

Handler = Callable[[FakeRequest], "FakeResponse | None | Awaitable[FakeResponse | None]"]


def default_response(req: FakeRequest) -> FakeResponse:
    """The built-in behaviour (echo / CALL_TOOL / tools done)."""
    calls: list[ToolCallSpec] = []
    for line in req.last_user_text.splitlines():
        m = _CALL_TOOL_RE.match(line)
        if m:
            args = m.group(2) or "{}"
            calls.append((m.group(1), args))
    if calls:
        results = req.tool_results
        if not results:
            return FakeResponse.tool_calls(calls)
        return FakeResponse.text("tools done: " + " | ".join(_content_text(r.get("content")) for r in results))
    return FakeResponse.text("echo: " + req.last_user_text)


def _count_tokens(text: str) -> int:
    return len(text.split())


def stream_pieces(text: str) -> list[str]:
    pieces = re.findall(r"\s*\S+|\s+$", text)
    if len(pieces) == 1 and len(text) > 1:
        half = len(text) // 2
        pieces = [text[:half], text[half:]]
    return pieces


def _split_n(s: str, n: int = 3) -> list[str]:
    if not s:
        return [""]
    size = max(1, -(-len(s) // n))
    return [s[i : i + size] for i in range(0, len(s), size)]


class _Stopping(Exception):
    pass


class FakeOpenAI:
    """Fake OpenAI server running in a background thread. See module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model: str = "fake-model",
        default_delay: float = 0.0,
        api_key: str | None = None,
        record: bool = True,
        context_window: int | None = None,
        chars_per_token: float | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.model = model
        self.default_delay = default_delay  # applied to every chat request
        self.api_key = api_key  # if set, other bearer tokens get a 401
        self.record = record
        # A model with a context window: a prompt over it by the fake's own count (characters / chars_per_token
        # when set, else words) is answered 400 context_length_exceeded, as OpenAI does.
        self.context_window = context_window
        self.chars_per_token = chars_per_token

        self._cond = threading.Condition()
        self._requests: list[FakeRequest] = []
        self._queue: collections.deque[FakeResponse] = collections.deque()
        self._handler: Handler | None = None
        self._errors: list[BaseException] = []
        self._total = 0
        self._in_flight = 0
        self._seq = itertools.count()

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stopping = False
        self._conn_tasks: set[asyncio.Task[None]] = set()

    def prompt_tokens(self, req: FakeRequest) -> int:
        """The fake's own token count of a request's messages (what it reports as usage and enforces)."""
        total = 0
        for m in req.messages:
            if not isinstance(m, dict):
                continue
            text = _content_text(m.get("content")) + "".join(
                (c.get("function") or {}).get("arguments", "") for c in m.get("tool_calls") or [])
            if self.chars_per_token:
                total += -(-len(text) // self.chars_per_token) + 4
            else:
                total += _count_tokens(text) + 4
        return int(total)

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> Self:
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI already started")
        self._stopping = False
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._main(ready, failure))
            except BaseException as e:  # pragma: no cover - surfaced via start()
                failure.append(e)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="FakeOpenAI", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("FakeOpenAI did not start in time")
        if failure:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError(f"FakeOpenAI failed to start: {failure[0]!r}") from failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; blocked requests are abandoned. The port is reused by a later start()."""
        thread, loop, ev = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        self._stopping = True
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass
        thread.join(timeout)
        self._thread = None
        self._loop = None
        self._stop_event = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeOpenAI not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # ------------------------------------------------------------ scripting
    def script(self, handler: Handler | None) -> Handler | None:
        """Set (or clear with None) the per-request handler. Usable as a decorator."""
        with self._cond:
            self._handler = handler
        return handler

    def enqueue(self, *responses: FakeResponse) -> None:
        """Responses served in order (one per chat request) before handler/default."""
        with self._cond:
            self._queue.extend(responses)

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    # ------------------------------------------------------------ recording
    @property
    def requests(self) -> list[FakeRequest]:
        """Snapshot of recorded chat-completions requests (in arrival order)."""
        with self._cond:
            return list(self._requests)

    @property
    def last_request(self) -> FakeRequest | None:
        with self._cond:
            return self._requests[-1] if self._requests else None

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by script handlers (each also produced a 500)."""
        with self._cond:
            return list(self._errors)

    @property
    def in_flight(self) -> int:
        """Chat requests received but not yet answered (e.g. delayed or blocked)."""
        with self._cond:
            return self._in_flight

    def count(self, predicate: Callable[[FakeRequest], bool] | None = None) -> int:
        with self._cond:
            if predicate is None:
                return self._total
            return sum(1 for r in self._requests if predicate(r))

    def _check(self, predicate: Callable[..., bool], arity: int) -> bool:
        return bool(predicate(self.requests) if arity else predicate())

    @staticmethod
    def _arity(predicate: Callable[..., bool]) -> int:
        try:
            params = inspect.signature(predicate).parameters.values()
        except (TypeError, ValueError):
            return 1
        return 1 if any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
        ) else 0

    def wait_for(self, predicate: Callable[..., bool], timeout: float = 10.0) -> list[FakeRequest]:
        """Block until ``predicate(requests)`` (or ``predicate()``) is true; return the requests.

        Wakes on every request arrival/completion and at least every 50 ms (so
        predicates on outside state work too). Raises ``TimeoutError``.
        Do not call from a running event loop thread - use :meth:`wait_for_async`.
        """
        arity = self._arity(predicate)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._check(predicate, arity):
                    return list(self._requests)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"FakeOpenAI.wait_for timed out after {timeout}s "
                        f"({len(self._requests)} requests, {self._in_flight} in flight)"
                    )
                self._cond.wait(min(remaining, 0.05))

    async def wait_for_async(
        self, predicate: Callable[..., bool], timeout: float = 10.0, interval: float = 0.02
    ) -> list[FakeRequest]:
        """Async version of :meth:`wait_for` (polls without blocking the caller's loop)."""
        arity = self._arity(predicate)
        deadline = time.monotonic() + timeout
        while True:
            if self._check(predicate, arity):
                return self.requests
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"FakeOpenAI.wait_for_async timed out after {timeout}s "
                    f"({self.count()} requests, {self.in_flight} in flight)"
                )
            await asyncio.sleep(interval)

    def wait_for_count(self, n: int, timeout: float = 10.0) -> list[FakeRequest]:
        return self.wait_for(lambda: self.count() >= n, timeout)

    def reset(self) -> None:
        """Forget requests, queued responses, the script handler and errors."""
        with self._cond:
            self._requests.clear()
            self._queue.clear()
            self._handler = None
            self._errors.clear()
            self._total = 0
            self.context_window = None
            self.chars_per_token = None
            self._cond.notify_all()

    # ------------------------------------------------------------ server
    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._stop_event = asyncio.Event()
        port = self._port if self._port is not None else self._requested_port
        try:
            server = await asyncio.start_server(self._on_conn, self.host, port, limit=1 << 20, backlog=1024)
        except BaseException as e:
            failure.append(e)
            ready.set()
            return
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for t in list(self._conn_tasks):
                t.cancel()
            if self._conn_tasks:
                await asyncio.gather(*self._conn_tasks, return_exceptions=True)
            await server.wait_closed()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            while not self._stopping:
                line = await reader.readline()
                if not line:
                    break
                if line in (b"\r\n", b"\n"):
                    continue
                parts = line.decode("latin-1").rstrip("\r\n").split(" ")
                if len(parts) != 3:
                    await self._send(writer, 400, {"content-type": "text/plain"}, b"bad request line", False)
                    break
                method, target, version = parts
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = await self._read_chunked(reader)
                else:
                    body = await reader.readexactly(int(headers.get("content-length") or 0))
                keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                if not await self._dispatch(method, target, headers, body, writer, keep_alive):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError, _Stopping):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._conn_tasks.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readline()

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, status: int, headers: Mapping[str, str], body: bytes, keep_alive: bool
    ) -> None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        hdrs = {k.lower(): v for k, v in headers.items()}
        hdrs.setdefault("content-length", str(len(body)))
        hdrs["connection"] = "keep-alive" if keep_alive else "close"
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        obj: Any,
        keep_alive: bool,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        hdrs = {"content-type": "application/json", "x-request-id": f"req_{uuid.uuid4().hex[:16]}", **(headers or {})}
        await self._send(writer, status, hdrs, json.dumps(obj).encode(), keep_alive)

    async def _dispatch(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> bool:
        path = target.split("?", 1)[0].rstrip("/")
        if path.startswith("/v1/models") and method == "GET":
            models = [{"id": self.model, "object": "model", "created": 0, "owned_by": "threadline-fake"}]
            if path == "/v1/models":
                await self._send_json(writer, 200, {"object": "list", "data": models}, keep_alive)
            else:
                mid = path[len("/v1/models/") :]
                await self._send_json(writer, 200, {**models[0], "id": mid}, keep_alive)
            return keep_alive
        if path == "/v1/chat/completions" and method == "POST":
            return await self._chat(method, path, headers, body, writer, keep_alive)
        err = FakeResponse.error(404, message=f"Unknown route: {method} {path}")
        await self._send_json(writer, 404, err.body, keep_alive)
        return keep_alive

    # ------------------------------------------------------------ chat
    async def _chat(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> bool:
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        req = FakeRequest(
            index=next(self._seq),
            method=method,
            path=path,
            headers=headers,
            body=parsed,
            raw_body=raw,
            received_at=time.time(),
            received_monotonic=time.monotonic(),
        )
        with self._cond:
            self._total += 1
            self._in_flight += 1
            if self.record:
                self._requests.append(req)
            self._cond.notify_all()
        resp: FakeResponse | None = None
        try:
            if self.api_key is not None and req.api_key != self.api_key:
                resp = FakeResponse.error(401, message="Incorrect API key provided.")
            elif not isinstance(parsed, dict):
                resp = FakeResponse.error(400, message="We could not parse the JSON body of your request.")
            elif not isinstance(parsed.get("messages"), list) or not parsed["messages"]:
                resp = FakeResponse.error(400, message="Missing required parameter: 'messages'.")
            elif self.context_window and (tokens := self.prompt_tokens(req)) > self.context_window:
                resp = FakeResponse.error(400, body={"error": {
                    "message": f"This model's maximum context length is {self.context_window} tokens. However, "
                               f"your messages resulted in {tokens} tokens. Please reduce the length of the messages.",
                    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded",
                }})
            else:
                if self.default_delay:
                    await asyncio.sleep(self.default_delay)
                resp = await self._resolve(req)
            req.response = resp
            return await self._answer(req, resp, writer, keep_alive)
        finally:
            with self._cond:
                req.completed_at = time.time()
                if req.status is None:
                    req.status = resp.status if resp is not None and resp.kind != "drop" else None
                self._in_flight -= 1
                self._cond.notify_all()

    async def _wait(self, resp: FakeResponse) -> None:
        if resp.delay > 0:
            await asyncio.sleep(resp.delay)
        ev = resp.block_on
        if ev is not None:
            deadline = None if resp.block_timeout is None else time.monotonic() + resp.block_timeout
            while not ev.is_set():
                if self._stopping:
                    raise _Stopping()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.01)

    async def _resolve(self, req: FakeRequest) -> FakeResponse:
        with self._cond:
            resp = self._queue.popleft() if self._queue else None
            handler = self._handler
        if resp is None or resp.kind == "default":
            if resp is not None:
                await self._wait(resp)
            resp = None
            if handler is not None:
                try:
                    out = handler(req)
                    if inspect.isawaitable(out):
                        out = await out
                    resp = out
                except Exception as e:
                    with self._cond:
                        self._errors.append(e)
                    return FakeResponse.error(500, message=f"fake handler raised {e!r}")
            if resp is None or resp.kind == "default":
                if resp is not None:
                    await self._wait(resp)
                resp = default_response(req)
        await self._wait(resp)
        return resp

    def _tool_calls_json(self, req: FakeRequest, resp: FakeResponse) -> list[dict[str, Any]]:
        out = []
        base = req.previous_tool_call_count
        for i, spec in enumerate(resp.tool_calls_spec or []):
            name, args = spec[0], spec[1]
            call_id = spec[2] if len(spec) > 2 else f"call_{base + i + 1}"  # type: ignore[misc]
            arguments = args if isinstance(args, str) else json.dumps(args)
            out.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        return out

    async def _answer(
        self, req: FakeRequest, resp: FakeResponse, writer: asyncio.StreamWriter, keep_alive: bool
    ) -> bool:
        if resp.kind == "drop":
            return False
        if resp.kind == "error":
            body = resp.body
            hdrs = {k.lower(): v for k, v in resp.headers.items()}
            if isinstance(body, (dict, list)):
                await self._send_json(writer, resp.status, body, keep_alive, hdrs)
            else:
                data = body.encode() if isinstance(body, str) else bytes(body or b"")
                hdrs.setdefault("content-type", "text/plain")
                await self._send(writer, resp.status, hdrs, data, keep_alive)
            return keep_alive

        model = resp.model or req.model or self.model
        tool_calls = self._tool_calls_json(req, resp)
        content = resp.content
        finish = resp.finish_reason or ("tool_calls" if tool_calls else "stop")
        if resp.usage is not None:
            prompt_tokens, completion_tokens = resp.usage
        else:
            prompt_tokens = self.prompt_tokens(req)
            completion_tokens = _count_tokens(content or "") + sum(
                1 + len(tc["function"]["arguments"]) // 4 for tc in tool_calls
            )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        cid = f"chatcmpl-fake{req.index}-{uuid.uuid4().hex[:8]}"
        created = int(time.time())
        extra_headers = {k.lower(): v for k, v in resp.headers.items()}

        if not req.stream:
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
            if tool_calls:
                message["tool_calls"] = tool_calls
            obj = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
            await self._send_json(writer, 200, obj, keep_alive, extra_headers)
            req.status = 200
            return keep_alive

        include_usage = req.include_usage

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            c: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                c["usage"] = None
            return c

        chunks: list[dict[str, Any]] = [chunk({"role": "assistant", "content": "", "refusal": None})]
        for piece in stream_pieces(content or ""):
            chunks.append(chunk({"content": piece}))
        for i, tc in enumerate(tool_calls):
            chunks.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": tc["id"],
                                "type": "function",
                                "function": {"name": tc["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for piece in _split_n(tc["function"]["arguments"]):
                chunks.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        chunks.append(chunk({}, None if resp.omit_finish_reason else finish))
        if include_usage:
            chunks.append(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": usage,
                }
            )

        hdrs = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            "x-request-id": f"req_{uuid.uuid4().hex[:16]}",
            "connection": "keep-alive" if keep_alive else "close",
            **extra_headers,
        }
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        writer.write(head.encode("latin-1"))
        req.status = 200

        def frame(data: bytes) -> bytes:
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        for n, c in enumerate(chunks):
            if resp.drop_after_chunks is not None and n >= resp.drop_after_chunks:
                await writer.drain()
                return False
            if n and resp.chunk_delay:
                await asyncio.sleep(resp.chunk_delay)
            writer.write(frame(b"data: " + json.dumps(c).encode() + b"\n\n"))
            await writer.drain()
        writer.write(frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return keep_alive


def _main() -> None:
    p = argparse.ArgumentParser(description="Run the fake OpenAI-compatible server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--latency", type=float, default=0.0, help="seconds to sleep before every chat reply")
    p.add_argument("--model", default="fake-model")
    p.add_argument("--record", action="store_true", help="keep every request in memory")
    args = p.parse_args()

    fake = FakeOpenAI(args.host, args.port, model=args.model, default_delay=args.latency, record=args.record)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with fake:
        print(fake.base_url, flush=True)
        done.wait()
        print(f"served {fake.count()} chat requests", flush=True)


if __name__ == "__main__":
    _main()
