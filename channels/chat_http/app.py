"""`ChatHttpChannel`: the chat API, SSE, web page and OpenAI endpoint as one starlette app on uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from temporalio.client import Client
from temporalio.service import RPCError
from threadline.channels.base import ChannelAdapter, ChannelContext
from threadline.channels.chat_http.bodies import ApiError
from threadline.channels.chat_http.guards import BodyLimit, LoopbackOnly
from threadline.channels.chat_http.openai_api import OpenAiApi
from threadline.channels.chat_http.settings import (
    MAX_REQUEST_BYTES,
    PUBLIC_PATHS,
    WEB_DIR,
    HttpConfigError,
    check_settings,
)
from threadline.channels.chat_http.threads_api import ChatApi
from threadline.channels.http_auth import BearerAuth
from threadline.channels.http_auth import json_error as _error  # noqa: I001 - one error body for every API
from threadline.models.spec import DEFAULT_HTTP_PORT, AgentSpec, HttpSettings

log = logging.getLogger("threadline.chat_http")


def build_app(client: Client, spec: AgentSpec, closing: asyncio.Event) -> Any:
    api = ChatApi(client, spec, closing)
    openai_api = OpenAiApi(api)
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
        Route(tid + "/approvals", guarded(api.approvals), methods=["GET"]),
        Route("/api/approvals/{aid:path}", guarded(api.decide), methods=["POST"]),
        Route(tid, guarded(api.get_thread), methods=["GET"]),
        Route(tid, guarded(api.rename_thread), methods=["PATCH"]),
        Route(tid, guarded(api.archive_thread), methods=["DELETE"]),
        Route("/v1/models", guarded(openai_api.models), methods=["GET"]),
        Route("/v1/chat/completions", guarded(openai_api.chat_completions), methods=["POST"]),
    ]
    app: Any = BearerAuth(Starlette(routes=routes), spec.http.token,
                          lambda path: path in PUBLIC_PATHS or path.startswith("/static/"))
    if not spec.http.token:
        app = LoopbackOnly(app)
    return BodyLimit(app, MAX_REQUEST_BYTES)


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
