"""`threadline process`: run agents (join, run), talk to them (use), and read their threads (threads, messages,
grep)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from typing import Annotated

import typer
from rich.markup import escape
from threadline.cli.agent_options import AgentOptions, ThreadDir, ThreadStoreUrl
from threadline.cli.agent_spec import build_spec, require
from threadline.cli.errors import CliError, usage_error
from threadline.cli.options import AgentName, ConnectionOptions, Output, OutputFormat, Room, with_options
from threadline.cli.output import Verbose, err, out, status
from threadline.cli.spec import SpecFile, join_from_spec
from threadline.models.spec import CONTAINER_HEALTH_HOST, DEFAULT_HEALTH_HOST

process_app = typer.Typer(
    name="process",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

ThreadId = Annotated[
    str | None,
    typer.Option("--thread-id", "-t", help="A thread: its short name, a path in the room, or the full id.",
                 show_default=False),
]
Message = Annotated[
    str | None,
    typer.Option("--message", "-m", help="Send this one message, print the reply and exit.", show_default=False),
]
Stream = Annotated[
    bool | None,
    typer.Option("--stream/--no-stream", help="Show the reply as it is written [default: when stdout is a terminal].",
                 show_default=False),
]
Limit = Annotated[int, typer.Option("--limit", min=1, help="Most threads to list (newest first).")]
Offset = Annotated[int, typer.Option("--offset", min=0, help="Threads to skip first.")]

JOIN_EPILOG = """\
[bold]Examples[/bold]

  threadline process join --room demo --agent-name support --channel chat --model offline

  threadline process join --room demo --agent-name support --channel chat -r "Answer in French." \
--temporal-address temporal.example.com:7233

Stop with Ctrl-C or SIGTERM: in-flight work finishes or goes back to Temporal; a second signal exits at once.
"""

RUN_EPILOG = """\
[bold]Examples[/bold]

  threadline process run --room demo --agent-name support --model offline

  threadline process run --room demo --agent-name support --model offline -m "Hello"

  threadline process run --room demo --agent-name support --model ollama/llama3.2 --thread-id main

In the chat: /new starts a thread, /threads lists them, /use ID switches, Ctrl-C interrupts a turn, Ctrl-D leaves.
"""

USE_EPILOG = """\
[bold]Examples[/bold]

  threadline process use --room demo --agent-name support -m "Hello"

  threadline process use --room demo --agent-name support --thread-id 20261128-134501-k3f9q2 -m "And then?"

  threadline process use --room demo --agent-name support --no-wait -m "ping"
"""

READ_EPILOG = """\
[bold]Examples[/bold]

  threadline process threads --room demo --agent-name support -o table

  threadline process messages --room demo --thread-id 20261128-134501-k3f9q2 -o json

  threadline process grep "invoice|refund" --room demo --thread-id 20261128-134501-k3f9q2 -i
"""


# Running an agent.


def _agent_error(e: BaseException) -> CliError:
    """What can stop an agent worker from starting, as a one-line error."""
    from temporalio.service import RPCError
    from threadline.activities.tools import ToolLoadError
    from threadline.worker import RulesFileError

    if isinstance(e, CliError):
        return e
    if isinstance(e, (RulesFileError, ToolLoadError)):
        return usage_error(str(e))
    if e.__class__.__name__ == "ThreadStoreUnavailable":  # activities/pg_store.py, imported only when used
        return CliError(str(e))
    if isinstance(e, OSError):
        return CliError(f"room storage is not usable: {e.strerror or e} ({getattr(e, 'filename', '') or ''})")
    if isinstance(e, RPCError):
        return CliError(f"Temporal refused the agent: {e.message}")
    return CliError(f"the agent stopped: {e.__class__.__name__}: {e}")


class AgentRun:
    """The agent's worker inside this process, from ready to graceful stop."""

    def __init__(self, client, spec, health_port: int | None = None,  # noqa: ANN001 - lazy temporalio
                 health_host: str = DEFAULT_HEALTH_HOST) -> None:
        self.client, self.spec = client, spec
        self.health_port, self.health_host = health_port, health_host
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from threadline.channels.registry import adapters_for
        from threadline.worker import run_agent

        ready = asyncio.Event()
        adapters = adapters_for(self.spec.channels)
        if self.health_port is not None:  # /healthz and /readyz, watching the worker and every channel
            from threadline.channels.health import HealthServer

            adapters = HealthServer(self.health_port, self.health_host, room=self.spec.room,
                                    agent=self.spec.agent_name).monitor(adapters, self.spec.channels)
        self.task = asyncio.create_task(run_agent(self.client, self.spec, self.stop, ready, adapters))
        waiting = asyncio.ensure_future(ready.wait())
        await asyncio.wait([self.task, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if self.task.done():
            self._raise()

    def _raise(self) -> None:
        assert self.task is not None
        try:
            self.task.result()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            raise _agent_error(e) from e

    async def wait(self) -> None:
        assert self.task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([self.task])
        self._raise()

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.wait()


def _status_line(spec, temporal) -> str:  # noqa: ANN001
    parts = [
        f"agent {spec.agent_name}", f"room {spec.room}", f"task queue {spec.ref.task_queue}",
        f"channels {', '.join(spec.channels) or 'chat'}", f"model {spec.model}", f"Temporal {temporal.address}",
    ]
    if temporal.ui_url:
        parts.append(f"UI {temporal.ui_url}")
    return " · ".join(parts)


@process_app.command("join", epilog=JOIN_EPILOG)
@with_options(agent=AgentOptions, connection=ConnectionOptions)
def join(ctx: typer.Context, agent: AgentOptions, connection: ConnectionOptions, spec_file: SpecFile = None,
         verbose: Verbose = False) -> None:
    """Run one long-lived agent process: its Temporal worker and channels, until SIGINT/SIGTERM."""
    health_port, health_host = agent.health_port, agent.health_host.strip()
    metrics_host = agent.metrics_host.strip()
    from threadline.cli.connection import recover_dead_workers_meanwhile

    if spec_file is not None:  # exactly the spec's agent (see cli/spec.py)
        spec, connection, health_port = join_from_spec(ctx, spec_file)
        health_host = metrics_host = CONTAINER_HEALTH_HOST
        recovering = recover_dead_workers_meanwhile(connection)  # the worker's start-up imports the runtime meanwhile
    else:
        if not agent.channel:
            raise usage_error("process join needs at least one --channel (for example --channel chat)")
        recovering = recover_dead_workers_meanwhile(connection)  # build_spec imports the whole runtime meanwhile
        spec = build_spec(agent, connection)
    serve_metrics_of(spec, metrics_host)
    asyncio.run(_join(spec, connection, health_port, health_host, recovering))


def serve_metrics_of(spec, host: str) -> None:  # noqa: ANN001
    """Before any Temporal client exists: the SDK's runtime is the one exporter of every metric."""
    if spec.metrics_port:
        from threadline import telemetry

        try:
            telemetry.serve_metrics(host, spec.metrics_port)
        except (RuntimeError, OSError) as e:
            raise usage_error(f"--metrics-port {spec.metrics_port}: cannot serve metrics on {host}: {e}") from e


async def _join(spec, connection: ConnectionOptions, health_port: int | None = None,  # noqa: ANN001
                health_host: str = DEFAULT_HEALTH_HOST, recovering: threading.Thread | None = None) -> None:
    from threadline.cli.connection import CONNECT_TIMEOUT, open_temporal

    temporal = await open_temporal(connection)
    if recovering is not None:  # else the worker's own recovery pass would look at the same journals
        await asyncio.to_thread(recovering.join, CONNECT_TIMEOUT)
    runner = AgentRun(temporal.client, spec, health_port, health_host)
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if runner.stop.is_set():
            err.print("exiting now", style="red")
            os._exit(128 + sig)
        err.print("stopping… in-flight work finishes or goes back to Temporal (signal again to exit at once)",
                  style="yellow")
        runner.stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await runner.start()
    out.print(escape(_status_line(spec, temporal)))
    await runner.wait()
    err.print("stopped")


@process_app.command("run", epilog=RUN_EPILOG)
@with_options(agent=AgentOptions, connection=ConnectionOptions)
def run(
    agent: AgentOptions,
    connection: ConnectionOptions,
    message: Message = None,
    thread_id: ThreadId = None,
    stream: Stream = None,
    verbose: Verbose = False,
) -> None:
    """Run an agent in this terminal and chat with it (or send one message with -m)."""
    spec = build_spec(agent, connection, default_channels=["chat"])
    if "chat" not in spec.channels:
        spec = spec.model_copy(update={"channels": ["chat", *spec.channels]})
    if agent.http_port is None:  # the terminal is the chat here: HTTP only when --http-port asks for it
        spec.http.serve = False
    serve_metrics_of(spec, agent.metrics_host.strip())
    asyncio.run(_run(spec, connection, message, thread_id, stream))


def _live_events(room: str, stream: bool | None, store_url: str | None = None):  # noqa: ANN202
    """The room's stream log when live output is wanted and the room's store is on this machine (or shared)."""
    from threadline.activities.storage import room_dir
    from threadline.activities.stores import open_stream_log

    wanted = out.is_terminal if stream is None else stream
    if not wanted or not (store_url or room_dir(room).exists()):
        return None
    return open_stream_log(room, store_url)


async def _run(spec, connection: ConnectionOptions, message: str | None, thread_id: str | None,  # noqa: ANN001
               stream: bool | None) -> None:
    from threadline.activities.stores import open_thread_store
    from threadline.channels.delivery import new_thread_name
    from threadline.cli.chat import Chat, check_thread, interactive, thread_hint
    from threadline.cli.connection import open_temporal

    temporal = await open_temporal(connection)
    runner = AgentRun(temporal.client, spec)
    await runner.start()
    try:
        ref = spec.ref
        if thread_id:
            current = await check_thread(temporal.client, ref, thread_id)
        elif spec.threading_mode == "none":
            current = ref.thread_id("main")
        else:
            current = ref.thread_id(new_thread_name())
        chat = Chat(temporal.client, ref, current, local_worker=True,
                    stream=_live_events(spec.room, stream, spec.thread_store_url))
        store = open_thread_store(spec.room, spec.thread_store_url)
        if message is not None:
            reply = await chat.ask(message)
            _finish_one_shot(reply, thread_hint(chat.thread_id), chat.reply_shown)
        else:
            status(_status_line(spec, temporal))
            await interactive(chat, store, label=spec.agent_name)
    finally:
        await runner.shutdown()


def _finish_one_shot(reply, hint: str, shown: bool) -> None:  # noqa: ANN001
    if reply.status == "completed":
        if not shown:
            out.print(escape(reply.text))
        status(hint)
        return
    status(hint)
    if reply.status == "cancelled":
        raise CliError("the turn was cancelled")
    raise CliError(f"the turn failed: {reply.error or 'unknown error'}")


# Talking to a running agent.


@process_app.command("use", epilog=USE_EPILOG)
@with_options(connection=ConnectionOptions)
def use(
    connection: ConnectionOptions,
    room: Room = None,
    agent_name: AgentName = None,
    thread_dir: ThreadDir = "",
    thread_id: ThreadId = None,
    message: Message = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Fail at once when the agent is not running, instead of queueing.")
    ] = False,
    stream: Stream = None,
    thread_store_url: ThreadStoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """Talk to an agent that is already running (no worker in this process)."""
    from threadline.models.thread import AgentRef

    room = require(room, "--room", "THREADLINE_ROOM", "NAME")
    agent_name = require(agent_name, "--agent-name", "THREADLINE_AGENT_NAME", "NAME")
    try:
        ref = AgentRef(room=room, agent_name=agent_name, thread_dir=thread_dir)
    except ValueError as e:
        raise usage_error(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from e  # type: ignore[attr-defined]
    from threadline.cli.threads import store_url_of

    asyncio.run(_use(ref, connection, thread_id, message, no_wait, stream, store_url_of(thread_store_url)))


async def _use(ref, connection: ConnectionOptions, thread_id: str | None, message: str | None,  # noqa: ANN001
               no_wait: bool, stream: bool | None, store_url: str | None = None) -> None:
    from threadline.activities.stores import open_thread_store
    from threadline.channels.delivery import agent_is_online, new_thread_name
    from threadline.cli.chat import Chat, check_thread, interactive, thread_hint
    from threadline.cli.connection import open_temporal

    temporal = await open_temporal(connection)
    current = await check_thread(temporal.client, ref, thread_id) if thread_id else ref.thread_id(new_thread_name())
    chat = Chat(temporal.client, ref, current, stream=_live_events(ref.room, stream, store_url))
    if no_wait and not await agent_is_online(temporal.client, ref):
        raise CliError(
            f"agent {ref.agent_name} is not running in room {ref.room} (no worker polls {ref.task_queue}); "
            f"start it with: threadline process join --room {ref.room} --agent-name {ref.agent_name} --channel chat"
        )
    if message is not None:
        try:
            reply = await chat.ask(message, wait_offline=not no_wait)
        except asyncio.CancelledError:
            raise
        _finish_one_shot(reply, thread_hint(chat.thread_id), chat.reply_shown)
        return
    await interactive(chat, open_thread_store(ref.room, store_url), label=ref.agent_name)


# Reading threads.




@process_app.command("threads", epilog=READ_EPILOG)
def threads(
    room: Room = None,
    agent_name: Annotated[
        str | None, typer.Option("--agent-name", envvar="THREADLINE_AGENT_NAME", help="Only this agent's threads.",
                                 show_default=False)
    ] = None,
    limit: Limit = 20,
    offset: Offset = 0,
    output: Output = OutputFormat.text,
    thread_store_url: ThreadStoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """List a room's threads, newest first: id, status, modified, channel, agent, name."""
    from threadline.activities.storage import threadline_home
    from threadline.cli.threads import print_threads, room_store

    room = require(room, "--room", "THREADLINE_ROOM", "NAME")
    store = room_store(room, thread_store_url)
    if store is None:
        status(f"no threads in room {room} yet (THREADLINE_HOME is {threadline_home()})")
    listed = store.threads(agent=agent_name, limit=limit, offset=offset) if store else []
    costs = None
    if store is not None and output is not OutputFormat.text:
        from threadline.activities.pricing import load_prices
        from threadline.cli.usage import thread_costs

        costs = thread_costs(store, agent_name, load_prices(None))
    print_threads(listed, output, costs)


def _thread_items(room: str | None, agent_name: str | None, thread_dir: str, thread_id: str | None,  # noqa: ANN202
                  store_url: str | None = None):
    from threadline.activities.storage import threadline_home
    from threadline.cli.threads import resolve_thread, room_store

    room = require(room, "--room", "THREADLINE_ROOM", "NAME")
    if not thread_id:
        raise usage_error(f"--thread-id is required; list threads with: threadline process threads --room {room}")
    store = room_store(room, store_url)
    if store is None:
        raise usage_error(f"no thread {thread_id!r} in room {room}: nothing is stored in this room "
                          f"(THREADLINE_HOME is {threadline_home()})")
    info = resolve_thread(store, room, agent_name, thread_dir, thread_id)
    return store.items(info.thread_id)


@process_app.command("messages", epilog=READ_EPILOG)
def messages(
    room: Room = None,
    thread_id: ThreadId = None,
    agent_name: AgentName = None,
    thread_dir: ThreadDir = "",
    output: Output = OutputFormat.text,
    thread_store_url: ThreadStoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """Show a thread's items in order: messages, replies, tool calls and results."""
    from threadline.cli.threads import print_items

    print_items(_thread_items(room, agent_name, thread_dir, thread_id, thread_store_url), output)


@process_app.command("grep", epilog=READ_EPILOG)
def grep(
    pattern: Annotated[str, typer.Argument(help="Regular expression (Python syntax) searched in item texts.")],
    room: Room = None,
    thread_id: ThreadId = None,
    agent_name: AgentName = None,
    thread_dir: ThreadDir = "",
    ignore_case: Annotated[bool, typer.Option("--ignore-case", "-i", help="Match without regard to case.")] = False,
    output: Output = OutputFormat.text,
    thread_store_url: ThreadStoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """Search a thread's items with a regular expression; exit code 1 when nothing matches."""
    from threadline.cli.threads import compile_pattern, grep_items, print_items

    regex = compile_pattern(pattern, ignore_case)
    found = grep_items(_thread_items(room, agent_name, thread_dir, thread_id, thread_store_url), regex)
    print_items(found, output)
    if not found:
        raise typer.Exit(1)


# `process spec` and `process deploy` (cli/spec.py, cli/deploy.py), `process approvals|approve|deny`.
from threadline.cli import approvals as _approvals  # noqa: E402
from threadline.cli import deploy as _deploy  # noqa: E402
from threadline.cli import spec as _spec  # noqa: E402

_spec.register(process_app)
_deploy.register(process_app)
for _name, _command in (("approvals", _approvals.approvals), ("approve", _approvals.approve),
                        ("deny", _approvals.deny)):
    process_app.command(_name, epilog=_approvals.APPROVALS_EPILOG)(_command)
