"""Running the `threadline` CLI in subprocesses for tests: one-shot commands and long-lived ones (join)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The test's environment (THREADLINE_HOME, fake model) with overrides; None removes a variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_") or k == "THREADLINE_HOME"}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "threadline.cli.app", *args]


def run_cli(
    *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(args), cwd=REPO, env=cli_env(env), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class CliProcess:
    """A CLI command running in the background; its output lines are collected as they arrive."""

    def __init__(self, *args: str, env: Mapping[str, str | None] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            command(args), cwd=REPO, env=cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:  # noqa: ANN001
        for line in stream:
            with self._cond:
                lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}\n{self.transcript()}")
                self._cond.wait(min(remaining, 0.1))

    def wait_for_line(self, text: str, *, stream: str = "any", timeout: float = 30) -> str:
        def lines() -> list[str]:
            return {"stdout": self.stdout, "stderr": self.stderr}.get(stream, self.stdout + self.stderr)

        def found() -> bool:
            return any(text in line for line in lines()) or self.proc.poll() is not None and self._drained()

        self.wait_for(found, timeout, f"{text!r} from {' '.join(self.args[:2])}")
        match = next((line for line in lines() if text in line), None)
        if match is None:
            raise AssertionError(f"process exited before printing {text!r}\n{self.transcript()}")
        return match

    def _drained(self) -> bool:
        return not any(r.is_alive() for r in self._readers)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def transcript(self) -> str:
        return "--- stdout\n" + "\n".join(self.stdout) + "\n--- stderr\n" + "\n".join(self.stderr)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
