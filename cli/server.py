"""`threadline server`: the embedded Temporal dev server, in the foreground (`start`) or the background one that
agent commands start on their own (`status`, `stop`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from threadline.cli import embedded
from threadline.cli.errors import CliError
from threadline.cli.output import Verbose, err, out, status

server_app = typer.Typer(
    name="server",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

Port = Annotated[
    int | None,
    typer.Option("--port", envvar="THREADLINE_TEMPORAL_PORT", min=1, max=64535,
                 help="gRPC port (default: 7233).", show_default=False),
]

START_EPILOG = """\
[bold]Examples[/bold]

  threadline server start

  threadline server start --port 7300 --ui-port 8300 --db-filename ./temporal.db

Agents reach it with --temporal-address 127.0.0.1:PORT (or with no address on the default port).
"""


def _port(port: int | None) -> int:
    return port if port is not None else embedded.default_port()


@server_app.command("start", epilog=START_EPILOG)
def start(
    port: Port = None,
    ui_port: Annotated[
        int | None, typer.Option("--ui-port", min=1, max=65535, help="Temporal UI port (default: port + 1000).",
                                 show_default=False)
    ] = None,
    db_filename: Annotated[
        Path | None, typer.Option("--db-filename", help="SQLite file of the server's state "
                                  "(default: THREADLINE_HOME/temporal/temporal.db).", show_default=False)
    ] = None,
    ip: Annotated[str, typer.Option("--ip", help="Address to listen on.")] = embedded.HOST,
    headless: Annotated[bool, typer.Option("--headless", help="Without the Temporal UI.")] = False,
    verbose: Verbose = False,
) -> None:
    """Run the embedded Temporal server in the foreground until Ctrl-C."""
    grpc_port = _port(port)
    ui = None if headless else (ui_port or grpc_port + embedded.UI_OFFSET)
    probe_host = embedded.HOST if ip in ("0.0.0.0", "::") else ip
    if embedded.is_listening(probe_host, grpc_port):
        raise CliError(
            f"something already listens on {probe_host}:{grpc_port} (the background server? "
            "see threadline server status; stop it with threadline server stop)"
        )
    paths = embedded.files()
    paths.root.mkdir(parents=True, exist_ok=True)
    db = (db_filename or paths.db).expanduser()
    db.parent.mkdir(parents=True, exist_ok=True)
    command = embedded.server_command(grpc_port, ui, db, ip=ip, log_level="info" if verbose else "warn")
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    stopping = {"count": 0}

    def forward(sig: int, _frame: object) -> None:
        stopping["count"] += 1
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if stopping["count"] == 1 else signal.SIGKILL)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    address = f"{probe_host}:{grpc_port}"
    try:
        asyncio.run(embedded.wait_until_ready(address, "default", proc, paths.log))
    except CliError:
        if proc.poll() is None:
            proc.terminate()
        raise
    out.print(escape(f"Temporal server on {address} · state {db}"
                     + (f" · UI {embedded.ui_url(ui)}" if ui else "")))
    status("Ctrl-C stops it")
    code = proc.wait()
    if stopping["count"] == 0 and code != 0:
        raise CliError(f"the Temporal server exited with code {code}")
    err.print("stopped")


@server_app.command("status")
def server_status(port: Port = None, verbose: Verbose = False) -> None:
    """Whether the embedded server answers, and where its state, log and pid live."""
    grpc_port = _port(port)
    address = f"{embedded.HOST}:{grpc_port}"
    paths = embedded.files()
    pid = embedded.read_pid()
    problem = asyncio.run(embedded.answers(address, timeout=3.0)) if embedded.is_listening(embedded.HOST, grpc_port) \
        else "nothing listens there"
    state = "running" if problem is None else f"not running ({problem})"
    out.print(escape(f"Temporal server on {address}: {state}"))
    if problem is None:
        out.print(escape(f"UI: {embedded.ui_url(grpc_port + embedded.UI_OFFSET)}"))
    out.print(escape(f"background pid: {pid if pid is not None else '-'}"))
    out.print(escape(f"state: {paths.db}"))
    out.print(escape(f"log: {paths.log}"))
    if problem is not None:
        raise typer.Exit(1)


@server_app.command("stop")
def stop(verbose: Verbose = False) -> None:
    """Stop the background server that agent commands started (its state stays for the next start)."""
    paths = embedded.files()
    pid = embedded.read_pid()
    if pid is None:
        paths.pid.unlink(missing_ok=True)
        status("no background Temporal server is running")
        return
    started = time.monotonic()
    if not embedded.stop_process(pid):
        raise CliError(f"the Temporal server (pid {pid}) did not stop")
    paths.pid.unlink(missing_ok=True)
    out.print(f"stopped the Temporal server (pid {pid}) in {time.monotonic() - started:.1f} s")
