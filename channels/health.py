"""`--health-port`: a tiny HTTP server in the agent process for liveness and readiness probes (Kubernetes, compose).

    GET /healthz   200 while the process's event loop answers and the agent has not failed; 503 once it has
    GET /readyz    200 once the agent's worker polls Temporal and every channel serves; 503 while starting,
                   stopping (so a load balancer stops sending work before the graceful stop), or a channel failed

Both answer JSON: `{"status": ..., "agent": ..., "room": ..., "worker": ..., "channels": {name: state}}`.

It runs beside the channels as one more adapter (`HealthServer.serve`), and watches the others through
`HealthServer.monitor`, which wraps each adapter so its `serve` reports `starting → serving → stopped | failed`.
Plain asyncio, no framework: it answers GET and HEAD on two paths and closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence

from temporalio.worker import Worker
from threadline.channels.base import ChannelAdapter, ChannelContext
from threadline.models.spec import DEFAULT_HEALTH_HOST

HEALTH_PATHS = ("/healthz", "/readyz")
DEFAULT_HEALTH_PORT = 8790


class HealthState:
    """What the probes report: the agent worker's state and each channel's."""

    def __init__(self, room: str, agent: str) -> None:
        self.room, self.agent = room, agent
        self.worker = "starting"  # starting | running | stopping | stopped | failed
        self.channels: dict[str, str] = {}
        self.error: str | None = None

    @property
    def live(self) -> bool:
        return self.worker != "failed" and "failed" not in self.channels.values()

    @property
    def ready(self) -> bool:
        return self.worker == "running" and all(state == "serving" for state in self.channels.values())

    def report(self, path: str) -> tuple[int, dict[str, object]]:
        ok = self.live if path == "/healthz" else self.ready
        body: dict[str, object] = {
            "status": "ok" if ok else "unavailable", "agent": self.agent, "room": self.room,
            "worker": self.worker, "channels": dict(self.channels),
        }
        if self.error:
            body["error"] = self.error
        return (200 if ok else 503), body


class _Monitored(ChannelAdapter):
    """An adapter whose `serve` reports its state to the health server."""

    def __init__(self, inner: ChannelAdapter, key: str, state: HealthState) -> None:
        self.inner, self.key, self.state = inner, key, state
        self.name = inner.name
        state.channels[key] = "starting"

    def workers(self, context: ChannelContext) -> list[Worker]:
        return self.inner.workers(context)

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        # run_agent starts `serve` once every worker (the channel's too) has started, so the channel serves now.
        self.state.channels[self.key] = "serving"
        try:
            await self.inner.serve(context, stop)
        except BaseException as e:
            self.state.channels[self.key] = "failed"
            self.state.error = f"channel {self.key}: {e.__class__.__name__}: {e}"
            raise
        self.state.channels[self.key] = "stopped"


class HealthServer(ChannelAdapter):
    name = "health"

    def __init__(self, port: int, host: str = DEFAULT_HEALTH_HOST, *, room: str = "", agent: str = "") -> None:
        self.host, self.port = host, port
        self.state = HealthState(room, agent)
        self.bound_port: int | None = None
        self.bound = asyncio.Event()

    def monitor(self, adapters: Sequence[ChannelAdapter], channels: Sequence[str] = ()) -> list[ChannelAdapter]:
        """The adapters (as `channels.registry.adapters_for(channels)` made them: one per channel in order, then one
        for all toolkits), each wrapped to report its state, then this server: run them all as the agent's adapters."""
        from threadline.channels.registry import ADAPTERS

        keys = [c for c in channels if c.partition(":")[0] in ADAPTERS]
        toolkits = [c for c in channels if c.startswith("toolkit:")]
        if toolkits:
            keys.append(",".join(toolkits))
        if len(keys) != len(adapters):
            keys = [f"{adapter.name}-{n}" for n, adapter in enumerate(adapters, 1)]
        return [*(_Monitored(a, key, self.state) for a, key in zip(adapters, keys, strict=True)), self]

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        try:
            server = await asyncio.start_server(self._answer, self.host, self.port)
        except OSError as e:
            raise OSError(e.errno, f"cannot serve health checks on {self.host}:{self.port}: {e.strerror}; "
                                   "pick another --health-port") from e
        self.bound_port = server.sockets[0].getsockname()[1]
        self.bound.set()
        sys.stderr.write(f"health checks: http://{self.host}:{self.bound_port}/healthz and /readyz\n")
        sys.stderr.flush()
        if self.state.worker == "starting":
            self.state.worker = "running"  # run_agent starts adapters once the agent's worker polls
        try:
            await stop.wait()
        finally:
            self.state.worker = "stopping"
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)).strip():
                pass  # headers: not needed
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method not in ("GET", "HEAD"):
                code, body = 405, {"error": "use GET"}
            elif path in HEALTH_PATHS:
                code, body = self.state.report(path)
            else:
                code, body = 404, {"error": f"unknown path {path}: use {' or '.join(HEALTH_PATHS)}"}
            data = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[code]
            head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + (b"" if method == "HEAD" else data))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
