"""The terminal chat (`process run` without -m) as a person sees it: in a pseudo-terminal, typing lines, reading
the screen, pressing Ctrl-C and Ctrl-D."""

from __future__ import annotations

import re
import sys
import threading
import time

import pexpect
import pytest

from tests.cli_helpers import REPO, cli_env
from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.temporal_server import TemporalDevServer

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """A CLI command in a pseudo-terminal; `screen` is everything it printed, without colour codes."""

    def __init__(self, *args: str) -> None:
        self.child = pexpect.spawn(
            sys.executable, ["-m", "threadline.cli.app", *args], cwd=str(REPO), env=cli_env({"TERM": "xterm"}),
            encoding="utf-8", dimensions=(50, 200), timeout=5,
        )
        self.raw = ""

    @property
    def screen(self) -> str:
        return _ANSI.sub("", self.raw)

    def _read(self) -> None:
        try:
            self.raw += self.child.read_nonblocking(65536, timeout=0.1)
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 30) -> re.Match[str]:
        """Waits until `pattern` shows on the screen past character `after`."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(self.screen, after)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r}; the screen:\n{self.screen}")
            if not self.child.isalive():
                self._drain()
                match = re.compile(pattern).search(self.screen, after)
                if match:
                    return match
                raise AssertionError(f"the chat exited waiting for {pattern!r}; the screen:\n{self.screen}")
            self._read()

    def _drain(self) -> None:
        try:
            while True:
                self.raw += self.child.read_nonblocking(65536, timeout=0.5)
        except (pexpect.EOF, pexpect.TIMEOUT):
            pass

    def type_line(self, text: str) -> int:
        """Types a line (after the `you>` prompt showed); returns where its answer starts on the screen."""
        mark = len(self.screen)
        self.child.sendline(text)
        return mark

    def leave(self, timeout: float = 30) -> int:
        """Ctrl-D at the prompt; returns the exit status."""
        self.child.sendeof()
        deadline = time.monotonic() + timeout
        while self.child.isalive() and time.monotonic() < deadline:
            self._read()
        self._drain()
        self.child.close()
        assert self.child.exitstatus is not None, f"the chat did not leave; the screen:\n{self.screen}"
        return self.child.exitstatus

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def terminal(temporal_server: TemporalDevServer, room: str):  # noqa: ANN201
    started: list[Terminal] = []

    def start(*extra: str) -> Terminal:
        chat = Terminal("process", "run", "--room", room, "--agent-name", "support",
                        "--temporal-address", temporal_server.address, *extra)
        started.append(chat)
        chat.wait_for(r"you> ")
        return chat

    yield start
    for chat in started:
        chat.kill()


def test_two_messages_two_replies_no_error_and_ctrl_d_leaves(terminal) -> None:  # noqa: ANN001
    chat = terminal("--model", "offline")
    first = chat.type_line("hello")
    chat.wait_for(r'support> \[offline model\] You said: "hello"\. Earlier messages from you in this thread: 0\.',
                  after=first)
    chat.wait_for(r"you> ", after=first)
    second = chat.type_line("and again")
    chat.wait_for(r'You said: "and again"\. Earlier messages from you in this thread: 1\.', after=second)
    chat.wait_for(r"you> ", after=second)
    assert chat.leave() == 0
    assert "turn failed" not in chat.screen and "error" not in chat.screen, chat.screen
    assert "Traceback" not in chat.screen
    assert len(re.findall(r"\[offline model\] You said", chat.screen)) == 2, chat.screen


def test_tool_lines_go_to_the_agent_and_thread_commands_work(terminal) -> None:  # noqa: ANN001
    chat = terminal("--model", "offline")
    mark = chat.type_line("/tool current_time")
    chat.wait_for(r"· tool current_time", after=mark)
    chat.wait_for(r"\[offline model\] The tools answered:\n- current_time: \d{4}-", after=mark)
    first_thread = re.findall(r"thread: (\S+) \(continue with", chat.screen)[0]

    mark = chat.type_line("/new")
    second_thread = chat.wait_for(r"new thread: (\S+)", after=mark).group(1)
    assert second_thread != first_thread
    chat.wait_for(r"you> ", after=mark)
    mark = chat.type_line("in the new thread")
    chat.wait_for(r'You said: "in the new thread"\. Earlier messages from you in this thread: 0\.', after=mark)

    chat.wait_for(r"you> ", after=mark)
    mark = chat.type_line("/threads")
    chat.wait_for(rf"\* {re.escape(second_thread)}\s+idle\s+in the new thread", after=mark)
    chat.wait_for(rf"  {re.escape(first_thread)}\s+idle", after=mark)

    chat.wait_for(r"you> ", after=mark)
    mark = chat.type_line(f"/use {first_thread}")
    chat.wait_for(rf"switched to thread {re.escape(first_thread)}", after=mark)
    chat.wait_for(r"you> ", after=mark)
    mark = chat.type_line("back here")
    chat.wait_for(r'You said: "back here"\. Earlier messages from you in this thread: 1\.', after=mark)
    chat.wait_for(r"you> ", after=mark)
    assert chat.leave() == 0
    assert "unknown command" not in chat.screen and "turn failed" not in chat.screen, chat.screen


def test_reply_streams_and_ctrl_c_interrupts_the_running_turn(terminal, fake_model: FakeOpenAI) -> None:  # noqa: ANN001
    chat = terminal("--model", "fake-model")
    words = " ".join(f"word{i}" for i in range(12))
    fake_model.enqueue(FakeResponse.text(words, chunk_delay=0.25))
    mark = chat.type_line("stream please")
    chat.wait_for(r"support> word0", after=mark)
    assert fake_model.in_flight == 1, "the first words showed only after the model had finished"
    assert "word11" not in chat.screen[mark:]
    chat.wait_for(r"word11", after=mark)
    chat.wait_for(r"you> ", after=mark)
    assert chat.screen[mark:].count("word0") == 1, chat.screen[mark:]

    release = threading.Event()
    fake_model.enqueue(FakeResponse.block(release, timeout=120))
    mark = chat.type_line("a long one")
    fake_model.wait_for(lambda: fake_model.in_flight == 1, timeout=30)
    chat.child.sendintr()
    chat.wait_for(r"interrupting the turn", after=mark)
    chat.wait_for(r"turn cancelled", after=mark)
    chat.wait_for(r"you> ", after=mark)
    release.set()

    mark = chat.type_line("still here?")
    chat.wait_for(r"support> echo: still here\?", after=mark)
    chat.wait_for(r"you> ", after=mark)
    assert chat.leave() == 0
    assert "turn failed" not in chat.screen and "Traceback" not in chat.screen, chat.screen


def test_the_chat_asks_before_a_tool_that_needs_approval(terminal) -> None:  # noqa: ANN001
    from tests.tools_for_tests import ledger_lines

    chat = terminal("--model", "offline", "--tool", "tests.tools_for_tests:append_line")
    mark = chat.type_line('/tool append_line {"line": "typed yes"}')
    chat.wait_for(r"· approval needed: append_line", after=mark)
    chat.wait_for(r"approve\? \[y = approve, n or a reason = deny\] ", after=mark)
    assert ledger_lines() == []
    chat.type_line("y")
    chat.wait_for(r"· approved by \S+ \(terminal\) at ", after=mark)
    chat.wait_for(r"- append_line: appended 'typed yes'", after=mark)
    chat.wait_for(r"you> ", after=mark)
    mark = chat.type_line('/tool append_line {"line": "never"}')
    chat.wait_for(r"approve\? ", after=mark)
    chat.type_line("not in the ledger")
    chat.wait_for(r"- append_line: denied by \S+: not in the ledger", after=mark)
    chat.wait_for(r"you> ", after=mark)
    assert chat.leave() == 0
    assert [line.split(" ", 1)[1] for line in ledger_lines()] == ["typed yes"]
    assert "Traceback" not in chat.screen


def test_a_line_typed_after_an_approval_was_decided_elsewhere_reaches_the_chat(terminal, temporal_server,
                                                                               room) -> None:  # noqa: ANN001
    """The inline prompt waits while someone else decides (here the CLI): the turn ends, and the next line typed
    is a chat message under the next `you>` prompt, not an answer to the prompt that is gone."""
    import json

    from tests.cli_helpers import run_cli

    chat = terminal("--model", "offline", "--tool", "tests.tools_for_tests:append_line")
    mark = chat.type_line('/tool append_line {"line": "decided elsewhere"}')
    chat.wait_for(r"approve\? \[y = approve, n or a reason = deny\] ", after=mark)
    address = ["--temporal-address", temporal_server.address]
    [request] = json.loads(run_cli("process", "approvals", "--room", room, "-o", "json", *address).stdout)
    assert run_cli("process", "approve", request["approval_id"], "--by", "ops", *address).returncode == 0
    chat.wait_for(r"- append_line: appended 'decided elsewhere'", after=mark)
    chat.wait_for(r"you> ", after=mark)
    mark = chat.type_line("are you there?")
    chat.wait_for(r'You said: "are you there\?"', after=mark)
    assert chat.leave() == 0
    assert "Traceback" not in chat.screen
