"""`threadline process approvals | approve | deny`: tool calls that wait for a person, decided from the terminal.

Registered on `process` by cli/app.py. A decision goes to the thread's workflow (`channels.approvals`): the first
one stands, a later one is told which and changes nothing (exit 1).
"""

from __future__ import annotations

import asyncio
import getpass
import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from threadline.cli.errors import CliError, usage_error
from threadline.cli.options import (
    AgentName,
    ConnectionOptions,
    Output,
    OutputFormat,
    Room,
    with_options,
)
from threadline.cli.output import Verbose, out

ApprovalId = Annotated[str, typer.Argument(help="The approval id, as `process approvals` lists it.",
                                           show_default=False)]
By = Annotated[str | None, typer.Option("--by", help="Who decides (default: your user name).", show_default=False)]

APPROVALS_EPILOG = """\
[bold]Examples[/bold]

  threadline process approvals --room demo

  threadline process approve 'demo/.threads/support/20261202-101500-k3f9q2:7'

  threadline process deny 'demo/.threads/support/20261202-101500-k3f9q2:7' --reason "not this customer"
"""


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


@with_options(connection=ConnectionOptions)
def approvals(connection: ConnectionOptions, room: Room = None, agent_name: AgentName = None,
              output: Output = OutputFormat.text, verbose: Verbose = False) -> None:
    """List the tool calls waiting for a person's approval (threads whose status is `waiting`)."""
    asyncio.run(_approvals(connection, room, agent_name, output))


async def _approvals(connection: ConnectionOptions, room: str | None, agent: str | None, fmt: OutputFormat) -> None:
    from threadline.channels.approvals import waiting_approvals
    from threadline.cli.connection import open_temporal

    temporal = await open_temporal(connection)
    pending = await waiting_approvals(temporal.client, room, agent)
    if fmt is OutputFormat.json:
        out.print_json(json.dumps([p.model_dump(mode="json") for p in pending]))
        return
    if not pending:
        out.print("no approval is waiting" + (f" in room {room}" if room else ""))
        return
    for p in pending:
        out.print(escape(f"{p.approval_id}  {p.tool} {p.arguments}  (asked {_when(p.requested_at)}, "
                         f"denied at {_when(p.expires_at)} without a decision)"))


@with_options(connection=ConnectionOptions)
def approve(connection: ConnectionOptions, approval_id: ApprovalId, by: By = None,
            reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the thread).")] = "",
            verbose: Verbose = False) -> None:
    """Approve a waiting tool call: it runs once, and the turn goes on."""
    asyncio.run(_decide(connection, approval_id, True, by, reason))


@with_options(connection=ConnectionOptions)
def deny(connection: ConnectionOptions, approval_id: ApprovalId, by: By = None,
         reason: Annotated[str, typer.Option("--reason", help="Why: the model is told (`denied by NAME: REASON`).",
                                             show_default=False)] = "",
         verbose: Verbose = False) -> None:
    """Deny a waiting tool call: the model gets the denial as the tool's result, and the turn goes on."""
    asyncio.run(_decide(connection, approval_id, False, by, reason))


async def _decide(connection: ConnectionOptions, approval_id: str, approve: bool, by: str | None,
                  reason: str) -> None:
    from pydantic import ValidationError
    from threadline.channels.approvals import ApprovalError, decide_approval
    from threadline.cli.connection import open_temporal
    from threadline.models.thread import ApprovalDecision, thread_of_approval

    try:
        decision = ApprovalDecision(approval_id=approval_id.strip(), approve=approve, by=(by or getpass.getuser()),
                                    via="cli", reason=reason)
    except ValidationError as e:
        raise usage_error(str(e.errors()[0]["msg"])) from e
    if not thread_of_approval(decision.approval_id):
        raise usage_error(f"{decision.approval_id!r} is not an approval id (they look like "
                          "ROOM/.threads/AGENT/THREAD:SEQ, as `process approvals` lists them)")
    temporal = await open_temporal(connection)
    try:
        outcome = await decide_approval(temporal.client, decision)
    except ApprovalError as e:
        raise usage_error(str(e)) from e
    if outcome.already_decided:
        raise CliError(f"already decided: {outcome.describe()}; nothing changed")
    out.print(escape(outcome.describe()))
