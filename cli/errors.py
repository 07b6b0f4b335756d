"""The one exception a command raises for a user-facing failure; `cli.app.main` prints it as one red line."""

from __future__ import annotations

USAGE = 2
"""Exit code of a mistake in the command line: fix the command and run it again."""
FAILURE = 1
"""Exit code of a failure at run time: the command was right, something it needed was not."""


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def usage_error(message: str) -> CliError:
    return CliError(message, USAGE)
