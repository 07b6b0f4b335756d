"""Where the CLI writes: replies and listings on stdout, status and errors on stderr, so stdout can be piped."""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    out: Console
    err: Console


@functools.cache
def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def __getattr__(name: str) -> Any:
    """`out` and `err`, the rich consoles, made on first use: commands that print only plain lines (`room queue
    send` in a script) start without loading rich."""
    if name in ("out", "err"):
        return console(stderr=name == "err")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _stderr_line(text: str, style: str) -> None:
    """One plain-text line on stderr, in `style` where rich would colour it (a terminal, or FORCE_COLOR)."""
    if sys.stderr.isatty() or os.environ.get("FORCE_COLOR"):
        from rich.markup import escape

        console(stderr=True).print(escape(text), style=style)
    else:
        sys.stderr.write(text + "\n")


def status(message: str) -> None:
    """A dim one-line status on stderr (plain text, no markup)."""
    _stderr_line(message, "dim")


def warn(message: str) -> None:
    _stderr_line(f"warning: {message}", "yellow")


def error_line(message: str) -> None:
    _stderr_line(f"error: {message}", "red")
