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
from collections.abc import Mapping
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
    """A command: its help, and where its sub-app (or, for a single command, its function) lives; or, for a group
    declared here, its own commands."""

    help: str
    module: str = ""
    attribute: str = ""
    epilog: str | None = None
    """For a single command: the module's attribute that holds its examples."""
    commands: Mapping[str, Command] | None = None

    def add_to(self, app: typer.Typer, name: str, argv: list[str] | None) -> None:
        if self.commands is not None:
            group = typer.Typer(no_args_is_help=True, rich_markup_mode="rich")
            mount(group, self.commands, argv)
            app.add_typer(group, name=name, help=self.help)
            return
        module = importlib.import_module(self.module)
        loaded = getattr(module, self.attribute)
        if isinstance(loaded, typer.Typer):
            app.add_typer(loaded, name=name, help=self.help)
        else:
            app.command(name, help=self.help, epilog=getattr(module, self.epilog) if self.epilog else None)(loaded)


ROOM_COMMANDS = {
    "queue": Command("Durable background jobs: send work to a queue an agent consumes (--channel queue:NAME).",
                     "threadline.cli.queue", "queue_app"),
    "agent": Command("Agents as tools: list a room's toolkits (agents run with --channel toolkit:NAME) and invoke "
                     "their tools.", "threadline.cli.room_agent", "agent_app"),
    "usage": Command("What the room's model calls cost (tokens, and dollars for priced models), from the thread "
                     "store.", "threadline.cli.usage", "usage", "USAGE_EPILOG"),
}

COMMANDS = {
    "codec-server": Command("Serve /decode and /encode for the Temporal UI, with this process's payload keys "
                            "(THREADLINE_PAYLOAD_KEY).", "threadline.cli.codec", "codec_server", "CODEC_EPILOG"),
    "process": Command("Run agents, talk to them, and read their threads.", "threadline.cli.process", "process_app"),
    "server": Command("The embedded Temporal server (state under THREADLINE_HOME, Threadline's search attributes "
                      "registered).", "threadline.cli.server", "server_app"),
    "room": Command("Room-level commands.", commands=ROOM_COMMANDS),
    "mailbox": Command("Register the email addresses agents answer (--channel mail:ADDRESS).", "threadline.cli.mail",
                       "mailbox_app"),
    "mail": Command("The inbound SMTP server.", "threadline.cli.mail", "mail_app"),
}
"""The top-level commands, in the order help lists them, with their help. A command line loads only the one it
names, at every level (scripts that send jobs in a loop pay for `room queue`, not for the agent's option tree or
the other room commands), and a group's own help none of them (it lists each name with its help); a mistaken name
loads them all."""


HELP_FLAGS = ("-h", "--help")


def mount(app: typer.Typer, commands: Mapping[str, Command], argv: list[str] | None) -> None:
    """Adds `commands` to `app`; given `argv` (what follows the group's name), only the one it names."""
    # The first word that is no option names the command; a help flag before it asks for the group's help.
    at = None if argv is None else next((i for i, a in enumerate(argv) if not a.startswith("-") or a in HELP_FLAGS),
                                        len(argv))
    named = None if argv is None or at is None else (argv[at] if at < len(argv) else "")
    named = "" if named in HELP_FLAGS else named
    for name, command in commands.items():
        if named == "":  # only the group's options: nothing runs but help or a usage error
            app.add_typer(typer.Typer(), name=name, help=command.help)
        elif named in (None, name) or named not in commands:
            command.add_to(app, name, None if argv is None or named != name else argv[at + 1:])


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
    mount(app, COMMANDS, argv)

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
