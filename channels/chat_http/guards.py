"""What every request passes before a route: a body size limit, and loopback-only access when there is no token."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from threadline.channels.chat_http.bodies import ApiError
from threadline.channels.http_auth import is_loopback
from threadline.channels.http_auth import json_error as _error  # noqa: I001 - one error body for every API


class BodyLimit:
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


class LoopbackOnly:
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
