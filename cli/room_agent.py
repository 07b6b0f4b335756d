"""`threadline room agent list-toolkits|invoke-tool`: agents of a room as callable tools (`--channel toolkit:NAME`).

Mistakes in the command line (arguments that are not JSON or do not match the tool's schema) exit 2; run-time
failures (unknown toolkit or tool, a toolkit still offline after --timeout, a failed turn, Temporal unreachable)
exit 1. Every failure is one red `error:` line on stderr, whichever app mounts these commands.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from threadline.cli.agent_spec import require
from threadline.cli.errors import FAILURE, USAGE, CliError, usage_error
from threadline.cli.options import ConnectionOptions, Room, with_options
from threadline.cli.output import Verbose, error_line, out, status

agent_app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich")

LIST_EPILOG = """\
[bold]Examples[/bold]

  threadline room agent list-toolkits --room demo

  threadline room agent list-toolkits --room demo -o table
"""

INVOKE_EPILOG = """\
[bold]Examples[/bold]

  threadline room agent invoke-tool --room demo --toolkit support --tool run_support_task \
--arguments '{"prompt": "Summarise ticket 42"}'

  threadline room agent invoke-tool --room demo --toolkit support --tool run_support_task \
--arguments '{"prompt": "And the invoice?", "thread_id": "demo/.threads/support/20261128-134501-k3f9q2"}' -o text

The invocation is a durable turn of the serving agent: if that agent restarts mid-turn, this still prints the one
result. --timeout only bounds the wait for the toolkit to come online (0: fail at once when it is not).
"""


class ListFormat(str, Enum):
    json = "json"
    table = "table"


class InvokeFormat(str, Enum):
    json = "json"
    text = "text"


def _reports_errors(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from threadline.channels.delivery import TemporalUnreachable
        from threadline.channels.toolkit.schema import InvalidArguments, ToolkitError

        try:
            fn(*args, **kwargs)
        except CliError as e:
            error_line(e.message)
            raise typer.Exit(e.exit_code) from None
        except InvalidArguments as e:
            error_line(str(e))
            raise typer.Exit(USAGE) from None
        except (ToolkitError, TemporalUnreachable) as e:
            error_line(str(e))
            raise typer.Exit(FAILURE) from None
        except ValueError as e:  # a room or toolkit name that cannot exist
            raise_as = usage_error(str(e))
            error_line(raise_as.message)
            raise typer.Exit(USAGE) from None

    return wrapper


@agent_app.command("list-toolkits", epilog=LIST_EPILOG)
@_reports_errors
@with_options(connection=ConnectionOptions)
def list_toolkits(
    connection: ConnectionOptions,
    room: Room = None,
    output: Annotated[ListFormat, typer.Option("--output", "-o", case_sensitive=False, help="Output format.")]
    = ListFormat.json,
    verbose: Verbose = False,
) -> None:
    """Every toolkit of the room: its tools and their schemas, the agent serving it, and whether it is online."""
    room = require(room, "--room", "THREADLINE_ROOM", "NAME")
    toolkits = asyncio.run(_list(connection, room))
    if output == ListFormat.json:
        out.print_json(json.dumps([t.model_dump(mode="json") for t in toolkits]))
        return
    table = Table("toolkit", "online", "agent", "tools", "registered", box=None, pad_edge=False)
    for t in toolkits:
        table.add_row(
            escape(t.name), "online" if t.online else "offline", escape(t.agent),
            escape(", ".join(tool.name for tool in t.tools)),
            t.registered_at.strftime("%Y-%m-%d %H:%M:%S") if t.registered_at else "",
        )
    if toolkits:
        out.print(table)
    else:
        out.print(f"no toolkits in room {escape(room)} (an agent serves one with --channel toolkit:NAME)")


async def _list(connection: ConnectionOptions, room: str):  # noqa: ANN202
    from threadline.channels.toolkit.room import Room as ToolkitRoom
    from threadline.cli.connection import open_temporal

    temporal = await open_temporal(connection)
    return await ToolkitRoom(temporal.client, room).list_toolkits()


@agent_app.command("invoke-tool", epilog=INVOKE_EPILOG)
@_reports_errors
@with_options(connection=ConnectionOptions)
def invoke_tool(
    connection: ConnectionOptions,
    room: Room = None,
    toolkit: Annotated[str | None, typer.Option("--toolkit", help="The toolkit (see list-toolkits).",
                                                show_default=False)] = None,
    tool: Annotated[str | None, typer.Option("--tool", help="The tool, e.g. run_support_task.",
                                             show_default=False)] = None,
    arguments: Annotated[str | None, typer.Option("--arguments", help="The tool's arguments, a JSON object.",
                                                  show_default=False)] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait for the toolkit to be online.")]
    = 30.0,
    output: Annotated[InvokeFormat, typer.Option("--output", "-o", case_sensitive=False,
                                                 help="json: {text, thread_id, turn_id}; text: the reply only.")]
    = InvokeFormat.json,
    verbose: Verbose = False,
) -> None:
    """Run a toolkit's tool: one turn of the agent serving it; prints its reply."""
    from threadline.channels.toolkit.schema import parse_arguments

    room = require(room, "--room", "THREADLINE_ROOM", "NAME")
    if not toolkit or not toolkit.strip():
        raise usage_error(f"--toolkit is required; list the toolkits with: threadline room agent list-toolkits --room {room}")
    if not tool or not tool.strip():
        raise usage_error("--tool is required: for toolkit NAME it is run_NAME_task (see list-toolkits)")
    toolkit, tool = toolkit.strip(), tool.strip()
    if arguments is None:
        raise usage_error('--arguments is required: a JSON object such as \'{"prompt": "..."}\'')
    parsed = parse_arguments(arguments, tool)
    result = asyncio.run(_invoke(connection, room, toolkit, tool, parsed, timeout))
    if output == InvokeFormat.text:
        out.print(escape(result.text))
    else:
        out.print_json(result.model_dump_json())


async def _invoke(connection: ConnectionOptions, room: str, toolkit: str, tool: str, arguments: dict[str, Any],
                  timeout: float):  # noqa: ANN202
    from threadline.channels.toolkit.room import Room as ToolkitRoom
    from threadline.cli.connection import open_temporal

    temporal = await open_temporal(connection)
    return await ToolkitRoom(temporal.client, room).invoke_tool(
        toolkit, tool, arguments, timeout=timeout, sender="cli", on_wait=status
    )
