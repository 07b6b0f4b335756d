"""The `threadline` command: `process` (agents and threads) and `server` (the embedded Temporal server).

`main` runs it and turns every failure into one red line on stderr with exit code 2 (usage) or 1 (run time);
tracebacks only with `-v`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import traceback
from dataclasses import dataclass

import typer
from threadline.cli.errors import USAGE, CliError
from threadline.cli.output import Verbose, error_line, state

EPILOG = """\
[bold]Examples[/bold]

  threadline process run --room demo --agent-name assistant --model offline -m "Hello"

  threadline process join --room demo --agent-name assistant --channel chat --model gpt-4o-mini

  threadline process use --room demo --agent-name assistant -m "Hello again"

  threadline process threads --room demo -o table

With no --temporal-address, agent commands use the embedded Temporal server on localhost:7233 (started in the background when nothing listens there; UI on http://localhost:8233).
"""


@dataclass(frozen=True)
class Command:
    """A top-level command: its help, and where its sub-app (or, for a single command, its function) lives."""

    help: str
    module: str
    attribute: str
    epilog: str | None = None
    """For a single command: the module's attribute that holds its examples."""

    def add_to(self, app: typer.Typer, name: str) -> None:
        module = importlib.import_module(self.module)
        loaded = getattr(module, self.attribute)
        if isinstance(loaded, typer.Typer):
            app.add_typer(loaded, name=name, help=self.help)
        else:
            app.command(name, help=self.help, epilog=getattr(module, self.epilog) if self.epilog else None)(loaded)


COMMANDS = {
    "codec-server": Command("Serve /decode and /encode for the Temporal UI, with this process's payload keys "
                            "(THREADLINE_PAYLOAD_KEY).", "threadline.cli.codec", "codec_server", "CODEC_EPILOG"),
    "process": Command("Run agents, talk to them, and read their threads.", "threadline.cli.process", "process_app"),
    "server": Command("The embedded Temporal server (state under THREADLINE_HOME, Threadline's search attributes "
                      "registered).", "threadline.cli.server", "server_app"),
    "room": Command("Room-level commands.", "threadline.cli.room", "room_app"),
    "mailbox": Command("Register the email addresses agents answer (--channel mail:ADDRESS).", "threadline.cli.mail",
                       "mailbox_app"),
    "mail": Command("The inbound SMTP server.", "threadline.cli.mail", "mail_app"),
}
"""The top-level commands, in the order help lists them, with their help. A command line loads only the one it
names (scripts that send jobs in a loop pay for `room`, not for the agent's whole option tree), and `threadline`'s
own help none of them (it lists each name with its help); a mistaken name loads them all."""


HELP_FLAGS = ("-h", "--help")


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The whole command tree; given `argv`, only what that command line needs (see COMMANDS)."""
    app = typer.Typer(
        name="threadline",
        help="Durable AI agents on Temporal.",
        epilog=EPILOG,
        no_args_is_help=True,
        rich_markup_mode="rich",
        context_settings={"help_option_names": list(HELP_FLAGS)},
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    # The first word that is no option names the command; a help flag before it asks for the root's help.
    named = None if argv is None else next((a for a in argv if not a.startswith("-") or a in HELP_FLAGS), "")
    named = "" if named in HELP_FLAGS else named
    for name, command in COMMANDS.items():
        if named == "":  # only the root's options: nothing runs but help or a usage error
            app.add_typer(typer.Typer(), name=name, help=command.help)
        elif named in (None, name) or named not in COMMANDS:
            command.add_to(app, name)

    @app.callback()
    def _root(verbose: Verbose = False) -> None:
        """Durable AI agents on Temporal."""

    return app


class _Failed(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _fail(message: str, code: int, error: BaseException | None = None) -> None:
    if state.verbose and error is not None:
        traceback.print_exception(error, file=sys.stderr)
    error_line(message)
    raise _Failed(code)


def _is_click_error(e: Exception) -> bool:
    return callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int)


def run(argv: list[str]) -> int:
    """Runs one command line and returns its exit code; every failure is printed as one line on stderr."""
    command = typer.main.get_command(build_app(argv))
    try:
        try:
            code = command.main(args=argv, prog_name="threadline", standalone_mode=False)
        except CliError as e:
            _fail(e.message, e.exit_code, e)
        except (typer.Abort, KeyboardInterrupt):
            return 130
        except Exception as e:  # noqa: BLE001
            if e.__class__.__name__ == "Abort":  # click's, with typers that do not vendor click
                return 130
            if _is_click_error(e):
                # A mistake in the command line found by the parser (typer vendors click, older typers use click).
                if not e.format_message():  # `threadline` with no command: help was printed
                    return e.exit_code
                ctx = getattr(e, "ctx", None)
                hint = f" (see {ctx.command_path} --help)" if ctx is not None and e.exit_code == USAGE else ""
                _fail(f"{e.format_message()}{hint}", e.exit_code, e)
            # A bug or an unforeseen failure: still one line unless -v.
            _fail(f"{e.__class__.__name__}: {e} (run with -v for the traceback)", 1, e)
    except _Failed as failed:
        return failed.code
    return code if isinstance(code, int) else 0


def main() -> None:
    """The `threadline` script. It ends with os._exit: the Temporal SDK's native threads can crash the interpreter
    while it finalizes, after the command has done everything it had to."""
    code = run(sys.argv[1:])
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
