"""`threadline codec-server`: decodes Threadline's encrypted payloads for the Temporal UI and the temporal CLI."""

from __future__ import annotations

from typing import Annotated

import typer
from threadline.cli.errors import usage_error
from threadline.cli.output import Verbose, status

CODEC_EPILOG = """\
[bold]Examples[/bold]

  THREADLINE_PAYLOAD_KEY=... threadline codec-server --port 8888 --token s3cret

  temporal workflow show -w ROOM/.threads/AGENT/THREAD --codec-endpoint http://127.0.0.1:8888 \
--codec-auth "Bearer s3cret"

In the Temporal UI: Settings → Codec Server → http://127.0.0.1:8888, with "pass access token" (the UI then sends
its user's token: give the server that token), or run the UI with TEMPORAL_CODEC_ENDPOINT.
"""


def codec_server(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8888,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    token: Annotated[str | None, typer.Option("--token", envvar="THREADLINE_CODEC_TOKEN", show_default=False,
                                              help="Bearer token every request must carry (required).")] = None,
    ui_origin: Annotated[list[str] | None, typer.Option(
        "--ui-origin", help="Origin of the Temporal UI allowed by CORS; repeatable [default: http://localhost:8233].",
        show_default=False)] = None,
    verbose: Verbose = False,
) -> None:
    import uvicorn
    from threadline.channels.codec_server import codec_app
    from threadline.channels.payload_codec import PayloadKeyError, codec_from_env

    if not token or not token.strip():
        raise usage_error("--token is required (or THREADLINE_CODEC_TOKEN): the decoded payloads are the threads' text")
    try:
        codec = codec_from_env()
    except PayloadKeyError as e:
        raise usage_error(str(e)) from e
    if codec is None:
        raise usage_error("no payload key: set THREADLINE_PAYLOAD_KEY (or THREADLINE_PAYLOAD_KEY_FILE) to the keys "
                          "the agents use")
    origins = [o.strip().rstrip("/") for o in ui_origin or ["http://localhost:8233"] if o.strip()]
    status(f"codec server on http://{host}:{port} (origins: {', '.join(origins)})")
    uvicorn.run(codec_app(codec, token.strip(), origins), host=host, port=port, log_level="warning")
