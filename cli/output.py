"""Where the CLI writes: replies and listings on stdout, status and errors on stderr, so stdout can be piped."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


class _State:
    verbose = False


state = _State()


def set_verbose(value: bool) -> bool:
    """Typer callback of every `-v/--verbose`: tracebacks on errors and INFO logs from the Temporal SDK."""
    if value:
        state.verbose = True
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("temporalio").setLevel(logging.INFO if state.verbose else logging.ERROR)
    return value


Verbose = Annotated[
    bool,
    typer.Option("--verbose", "-v", envvar="THREADLINE_VERBOSE", callback=set_verbose,
                 help="Show SDK logs, and tracebacks on errors."),
]
"""Every command's `-v/--verbose`."""


def status(message: str) -> None:
    """A dim one-line status on stderr (plain text, no markup)."""
    err.print(escape(message), style="dim")


def warn(message: str) -> None:
    err.print(f"warning: {escape(message)}", style="yellow")


def error_line(message: str) -> None:
    err.print(f"error: {escape(message)}", style="red")
