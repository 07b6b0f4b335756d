"""The `threadline` command: `process` (agents and threads) and `server` (the embedded Temporal server).

`main` runs it and turns every failure into one red line on stderr with exit code 2 (usage) or 1 (run time);
tracebacks only with `-v`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

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


def _process(app: typer.Typer, help: str) -> None:
    from threadline.cli.process import process_app

    app.add_typer(process_app, name="process", help=help)


def _codec_server(app: typer.Typer, help: str) -> None:
    from threadline.cli import codec

    app.command("codec-server", help=help, epilog=codec.CODEC_EPILOG)(codec.codec_server)


def _server(app: typer.Typer, help: str) -> None:
    from threadline.cli.server import server_app

    app.add_typer(server_app, name="server", help=help)


def _room(app: typer.Typer, help: str) -> None:
    from threadline.cli.room import room_app

    app.add_typer(room_app, name="room", help=help)


def _mailbox(app: typer.Typer, help: str) -> None:
    from threadline.cli.mail import mailbox_app

    app.add_typer(mailbox_app, name="mailbox", help=help)


def _mail(app: typer.Typer, help: str) -> None:
    from threadline.cli.mail import mail_app

    app.add_typer(mail_app, name="mail", help=help)


COMMANDS = {
    "codec-server": ("Serve /decode and /encode for the Temporal UI, with this process's payload keys "
                     "(THREADLINE_PAYLOAD_KEY).", _codec_server),
    "process": ("Run agents, talk to them, and read their threads.", _process),
    "server": ("The embedded Temporal server (state under THREADLINE_HOME, Threadline's search attributes "
               "registered).", _server),
    "room": ("Room-level commands.", _room),
    "mailbox": ("Register the email addresses agents answer (--channel mail:ADDRESS).", _mailbox),
    "mail": ("The inbound SMTP server.", _mail),
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
    for name, (help, add) in COMMANDS.items():
        if named == "":  # only the root's options: nothing runs but help or a usage error
            app.add_typer(typer.Typer(), name=name, help=help)
        elif named in (None, name) or named not in COMMANDS:
            add(app, help)

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
