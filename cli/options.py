"""Options shared by commands, declared once: the agent's identity (room, agent name), the Temporal connection
options, the output format; every command's `-v/--verbose` is `cli.output.Verbose`, the agent's own options are
`cli.agent_options`. They import no runtime module, so a command that only talks to Temporal (`room queue send`)
starts without loading the agent's schema.

Commands take them as one value per group through `with_options`, which adds the group's parameters to the
command's signature for typer, so a new option shows up in every command that uses its group.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

AGENT_PANEL = "Agent"
TEMPORAL_PANEL = "Temporal"


class OutputFormat(str, Enum):
    text = "text"
    table = "table"
    json = "json"

# The agent's identity.

Room = Annotated[
    str | None,
    typer.Option("--room", envvar="THREADLINE_ROOM", help="Room the agent lives in (its threads, storage, task queue).",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
AgentName = Annotated[
    str | None,
    typer.Option("--agent-name", envvar="THREADLINE_AGENT_NAME", help="Name of the agent within the room.",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]

# The Temporal connection options.

TemporalAddress = Annotated[
    str | None,
    typer.Option("--temporal-address", envvar="THREADLINE_TEMPORAL_ADDRESS",
                 help="host:port of a Temporal server (default: Temporal's own TEMPORAL_ADDRESS or profile, else the "
                      "embedded server on localhost:7233). Order: flags, THREADLINE_* variables, Temporal's "
                      "environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, "
                      "TEMPORAL_TLS_*, TEMPORAL_PROFILE in temporal.toml), the embedded server.",
                 rich_help_panel=TEMPORAL_PANEL, show_default=False),
]
Namespace = Annotated[
    str | None,
    typer.Option("--namespace", envvar="THREADLINE_NAMESPACE",
                 help="Temporal namespace [default: TEMPORAL_NAMESPACE or the profile's, else default].",
                 rich_help_panel=TEMPORAL_PANEL, show_default=False),
]
TemporalApiKey = Annotated[
    str | None,
    typer.Option("--temporal-api-key", envvar="TEMPORAL_API_KEY", help="API key for Temporal Cloud (turns TLS on).",
                 rich_help_panel=TEMPORAL_PANEL, show_default=False),
]
TemporalTlsCert = Annotated[
    Path | None,
    typer.Option("--temporal-tls-cert", envvar="TEMPORAL_TLS_CERT", help="Client certificate file for mTLS.",
                 rich_help_panel=TEMPORAL_PANEL, show_default=False),
]
TemporalTlsKey = Annotated[
    Path | None,
    typer.Option("--temporal-tls-key", envvar="TEMPORAL_TLS_KEY", help="Client private key file for mTLS.",
                 rich_help_panel=TEMPORAL_PANEL, show_default=False),
]

Output = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", case_sensitive=False, help="Output format."),
]


@dataclass
class ConnectionOptions:
    temporal_address: TemporalAddress = None
    namespace: Namespace = None
    temporal_api_key: TemporalApiKey = None
    temporal_tls_cert: TemporalTlsCert = None
    temporal_tls_key: TemporalTlsKey = None


def with_options(**groups: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@with_options(agent=AgentOptions)`: the command gets `agent: AgentOptions`, typer sees its fields."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in groups]
        added = []
        for group in groups.values():
            hints = inspect.get_annotations(group, eval_str=True)
            for f in fields(group):
                added.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                               annotation=hints[f.name]))

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            for name, group in groups.items():
                kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in fields(group)})
            return fn(**kwargs)

        # Keep the command's own parameters first (arguments), then the shared groups.
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        wrapper.__signature__ = signature.replace(parameters=[*keyword, *added])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in [*keyword, *added]}
        return wrapper

    return decorate
