"""Settings of the chat channel that are checked before it starts, and the paths it serves."""

from __future__ import annotations

from pathlib import Path

from threadline.channels.http_auth import is_loopback
from threadline.models.limits import MAX_TURN_TEXT_BYTES
from threadline.models.spec import AgentSpec, HttpSettings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
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
