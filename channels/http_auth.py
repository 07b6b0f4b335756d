"""What the agent's HTTP servers (chat, MCP) share: a loopback test and bearer-token auth."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse


def json_error(status: int, message: str, code: str = "error") -> JSONResponse:
    """The error body of every Threadline HTTP API: `{"error": {"message", "code"}}`."""
    return JSONResponse({"error": {"message": message, "code": code}}, status_code=status)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """`Authorization: Bearer TOKEN` on every request whose path is not public (no token: no check)."""

    def __init__(self, app: Any, token: str | None, public: Callable[[str], bool] = lambda path: False) -> None:
        self.app, self.token, self.public = app, token, public

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.token and scope["type"] == "http" and not self.public(scope["path"]):
            headers = dict(scope.get("headers") or [])
            scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
                response = json_error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                                      "unauthorized")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
