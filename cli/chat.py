"""Chatting with an agent from the terminal (`process run`, `process use`): one turn at a time, by thread."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import sys
import threading
from collections.abc import Callable

from pydantic import ValidationError
from rich.markup import escape
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from threadline.activities.stores import RoomStreamLog, RoomThreadStore
from threadline.activities.stream_log import StreamEvent
from threadline.activities.tools import summarize_call
from threadline.channels.approvals import ApprovalError, decide_approval, thread_approvals
from threadline.channels.delivery import (
    agent_is_online,
    deliver_turn,
    interrupt_turn,
    new_thread_name,
    new_turn_id,
    submit_turn,
    wait_for_reply,
)
from threadline.cli.errors import CliError, usage_error
from threadline.cli.output import err, out, status, warn
from threadline.cli.threads import short_id, summary_heading
from threadline.models.thread import AgentRef, ApprovalDecision, Reply, Turn

STREAM_POLL_SECONDS = 0.05
APPROVAL_POLL_SECONDS = 0.5
HELP = (
    "type a message; /new starts a thread, /threads lists them, /use ID switches, /help; Ctrl-D leaves "
    "(any other line, /tool ... included, goes to the agent)"
)
CHAT_COMMANDS = frozenset({"/new", "/threads", "/use", "/help", "/?"})
"""The chat's own commands; every other line, whatever it starts with, is a message for the agent."""


async def check_thread(client: Client, ref: AgentRef, value: str) -> str:
    """`--thread-id` → the thread's workflow id, once Temporal confirms the thread exists and is open."""
    thread_id = ref.thread_id(value)
    try:
        description = await client.get_workflow_handle(thread_id).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            if value.strip().strip("/") == "main":
                return thread_id  # the agent's main thread (threading mode none) starts with its first turn
            raise usage_error(
                f"no thread {value!r} for agent {ref.agent_name} in room {ref.room} (workflow id {thread_id}); "
                f"list threads with: threadline process threads --room {ref.room} --agent-name {ref.agent_name}"
            ) from e
        raise
    if description.status is not None and description.status.name != "RUNNING":
        raise CliError(
            f"thread {value!r} has ended in Temporal (status {description.status.name}); start a new thread "
            "(leave out --thread-id)"
        )
    return thread_id


def thread_hint(thread_id: str) -> str:
    name = short_id(thread_id)
    return f"thread: {name} (continue with --thread-id {name})"


class LiveReply:
    """Shows a turn as it happens: text deltas on stdout, tool calls as status lines on stderr.

    Events come from the room's stream log, which the agent's activities write; a retried model call starts its
    text again, so the aborted attempt's text is closed off with a note rather than silently mixed in."""

    def __init__(self, log: RoomStreamLog, thread_id: str, turn_id: str, prefix: str = "") -> None:
        self.log, self.thread_id, self.turn_id, self.prefix = log, thread_id, turn_id, prefix
        self.after = 0
        self.text = ""
        self.line_open = False

    def pump(self) -> None:
        for event in self.log.events(self.thread_id, after_id=self.after, turn_id=self.turn_id):
            self.after = event.id
            self._show(event)

    def _show(self, event: StreamEvent) -> None:
        # Events come in write order: an aborted attempt's text is all before the `retry` event of the next one.
        if event.kind == "delta":
            if not self.line_open:
                out.file.write(self.prefix)
            out.file.write(event.data["text"])
            out.file.flush()
            self.text += event.data["text"]
            self.line_open = True
            return
        self._close_line()
        if event.kind == "retry":
            self.text = ""
            status("(the model call was retried after a failure; its answer starts again)")
        elif event.kind == "tool_started":
            status(f"· tool {event.data['summary']}")
        elif event.kind == "tool_finished" and not event.data.get("ok", True):
            status(f"· tool {event.data['name']} failed: {event.data['summary']}")

    def _close_line(self) -> None:
        if self.line_open:
            out.file.write("\n")
            out.file.flush()
            self.line_open = False

    async def follow(self, done: asyncio.Event) -> None:
        while not done.is_set():
            self.pump()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), STREAM_POLL_SECONDS)
        self.pump()

    def showed(self, reply: Reply) -> bool:
        """Ends the live output; True when it already showed the whole reply text."""
        shown = reply.status == "completed" and bool(reply.text) and self.text.endswith(reply.text)
        self._close_line()
        return shown


class Chat:
    """Sends turns to one agent's current thread and reports the replies."""

    def __init__(
        self,
        client: Client,
        ref: AgentRef,
        thread_id: str,
        *,
        sender: str = "user",
        local_worker: bool = False,
        stream: RoomStreamLog | None = None,
    ) -> None:
        self.client, self.ref, self.thread_id, self.sender = client, ref, thread_id, sender
        self.local_worker = local_worker
        """True in `process run`: the agent's worker is this process, so it is online."""
        self.stream = stream
        self.running_turn: str | None = None
        self.reply_shown = False
        """Whether the last reply's text was already shown live."""
        self.prefix = ""
        """Written before live text, e.g. the agent's name in the interactive chat."""

    async def ask(self, text: str, *, wait_offline: bool = True) -> Reply:
        try:
            turn = Turn(turn_id=new_turn_id(), channel="chat", sender=self.sender, text=text)
        except ValidationError as e:
            raise usage_error(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from e
        self.reply_shown = False
        if self.stream is None:
            return await self._deliver(turn, wait_offline)
        live = LiveReply(self.stream, self.thread_id, turn.turn_id, self.prefix)
        done = asyncio.Event()
        follower = asyncio.ensure_future(live.follow(done))
        try:
            reply = await self._deliver(turn, wait_offline)
        finally:
            done.set()
            await follower
        self.reply_shown = live.showed(reply)
        return reply

    async def _deliver(self, turn: Turn, wait_offline: bool) -> Reply:
        self.running_turn = turn.turn_id
        try:
            if self.local_worker or await agent_is_online(self.client, self.ref):
                return await submit_turn(self.client, self.ref, self.thread_id, turn)
            if not wait_offline:
                raise CliError(
                    f"agent {self.ref.agent_name} is not running in room {self.ref.room} (no worker polls "
                    f"{self.ref.task_queue}); start it with: threadline process join --room {self.ref.room} "
                    f"--agent-name {self.ref.agent_name} --channel chat"
                )
            warn(
                f"agent {self.ref.agent_name} is not running in room {self.ref.room}: the message is queued durably "
                "in Temporal and runs when the agent starts; waiting for the reply (Ctrl-C stops waiting, the "
                "message stays queued)"
            )
            # Signal-with-start: Temporal keeps the turn even if this process or the server restarts.
            await deliver_turn(self.client, self.ref, self.thread_id, turn)
            return await wait_for_reply(self.client, self.thread_id, turn.turn_id)
        finally:
            self.running_turn = None

    def tool_lines(self, store: RoomThreadStore | None, turn_id: str) -> list[str]:
        """Tool calls of a finished turn, read from the thread store (empty when the store is elsewhere)."""
        if store is None:
            return []
        if self.stream is not None:
            return []
        lines = []
        for item in store.items(self.thread_id):
            if item.turn_id != turn_id:
                continue
            if item.type == "summary":
                lines.append(f"· {summary_heading(item)}")
            lines += [f"· tool {summarize_call(c.name, c.arguments)}" for c in item.tool_calls]
            if item.type == "tool_result" and item.data.get("ok") is False:
                lines.append(f"· tool {item.tool_name} failed")
        return lines


class _LineReader:
    """`input()` in a daemon thread, so the event loop keeps running and Ctrl-C never waits on the terminal. One
    line is read at a time: a line typed after its reader gave up (the approval prompt of a turn that ended because
    someone decided elsewhere) goes to the next reader, under the next prompt, instead of being lost."""

    def __init__(self) -> None:
        self._line: asyncio.Future[str | None] | None = None

    async def read(self, prompt: str, leave: asyncio.Event) -> str | None:
        if self._line is None:
            self._line = self._start(prompt)
        else:  # the terminal is still read for an earlier prompt: show this one
            sys.stdout.write(prompt)
            sys.stdout.flush()
        line = self._line
        leaving = asyncio.ensure_future(leave.wait())
        try:
            await asyncio.wait([line, leaving], return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
        if not line.done():
            return None
        self._line = None
        return line.result()

    @staticmethod
    def _start(prompt: str) -> asyncio.Future[str | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()

        def target() -> None:
            try:
                line: str | None = input(prompt)
            except (EOFError, KeyboardInterrupt, OSError):
                line = None

            def deliver() -> None:
                if not future.done():
                    future.set_result(line)

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver)

        threading.Thread(target=target, name="threadline-input", daemon=True).start()
        return future


class Interrupts:
    """Ctrl-C / SIGTERM during a chat: while a turn runs the first interrupts it; otherwise it leaves; the next
    one (while leaving) exits at once."""

    def __init__(self, on_interrupt_turn: Callable[[], bool]) -> None:
        self.leave = asyncio.Event()
        self._on_interrupt_turn = on_interrupt_turn

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._handle, sig)

    def _handle(self, sig: signal.Signals) -> None:
        if self.leave.is_set():
            err.print("exiting now", style="red")
            os._exit(128 + sig)
        if sig == signal.SIGINT and self._on_interrupt_turn():
            return
        err.print("\nleaving… (Ctrl-C again exits at once)", style="yellow")
        self.leave.set()


def print_reply(chat: Chat, reply: Reply, store: RoomThreadStore | None, label: str) -> None:
    for line in chat.tool_lines(store, reply.turn_id):
        status(line)
    if reply.status == "completed":
        if not chat.reply_shown:
            out.print(f"[bold]{escape(label)}>[/bold] {escape(reply.text)}")
    elif reply.status == "cancelled":
        warn("turn cancelled")
    else:
        err.print(f"turn failed: {escape(reply.error or 'unknown error')}", style="red")


async def interactive(chat: Chat, store: RoomThreadStore | None, *, label: str) -> None:
    loop_state = {"interrupting": False}

    def interrupt_turn_now() -> bool:
        turn_id = chat.running_turn
        if turn_id is None or loop_state["interrupting"]:
            return False
        loop_state["interrupting"] = True
        err.print("\ninterrupting the turn… (Ctrl-C again leaves)", style="yellow")
        asyncio.ensure_future(interrupt_turn(chat.client, chat.thread_id, turn_id))
        return True

    chat.prefix = f"{label}> "
    interrupts = Interrupts(interrupt_turn_now)
    interrupts.install()
    reader = _LineReader()
    status(HELP)
    status(thread_hint(chat.thread_id))
    while not interrupts.leave.is_set():
        line = await reader.read("you> ", interrupts.leave)
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text.split(" ", 1)[0] in CHAT_COMMANDS:
            await _command(chat, store, text)
            continue
        loop_state["interrupting"] = False
        asking = asyncio.ensure_future(chat.ask(text))
        leaving = asyncio.ensure_future(interrupts.leave.wait())
        approving = asyncio.ensure_future(_answer_approvals(chat, reader, interrupts.leave))
        await asyncio.wait([asking, leaving], return_when=asyncio.FIRST_COMPLETED)
        leaving.cancel()
        approving.cancel()
        if not asking.done():
            asking.cancel()
            warn("left before the reply; the turn goes on in Temporal (see it with: threadline process messages "
                 f"--room {chat.ref.room} --thread-id {short_id(chat.thread_id)})")
            break
        try:
            reply = asking.result()
        except CliError as e:
            err.print(f"error: {escape(e.message)}", style="red")
            continue
        except Exception as e:  # noqa: BLE001 - one failed turn does not end the chat
            err.print(f"error: {escape(f'{e.__class__.__name__}: {e}')}", style="red")
            continue
        print_reply(chat, reply, store, label)
    status(thread_hint(chat.thread_id))


async def _answer_approvals(chat: Chat, reader: _LineReader, leave: asyncio.Event) -> None:
    """While a turn runs, asks here about each of its tool calls that waits for approval (others may decide it
    too, on the web page or with `process approve`: the first decision stands)."""
    asked: set[str] = set()
    while True:
        await asyncio.sleep(APPROVAL_POLL_SECONDS)
        with contextlib.suppress(RPCError):
            for request in await thread_approvals(chat.client, chat.thread_id):
                if request.approval_id in asked:
                    continue
                asked.add(request.approval_id)
                status(f"· approval needed: {summarize_call(request.tool, request.arguments)}")
                line = await reader.read("approve? [y = approve, n or a reason = deny] ", leave)
                if line is None:
                    return
                answer = line.strip()
                approve = answer.lower() in ("y", "yes")
                try:
                    outcome = await decide_approval(chat.client, ApprovalDecision(
                        approval_id=request.approval_id, approve=approve, by=getpass.getuser(), via="terminal",
                        reason="" if approve or answer.lower() in ("", "n", "no") else answer))
                except ApprovalError as e:
                    warn(str(e))
                    continue
                status(f"· {'already decided: ' if outcome.already_decided else ''}{outcome.describe()}")


async def _command(chat: Chat, store: RoomThreadStore | None, text: str) -> None:
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    if name == "/new":
        chat.thread_id = chat.ref.thread_id(new_thread_name())
        status(f"new thread: {short_id(chat.thread_id)}")
    elif name == "/threads":
        threads = store.threads(agent=chat.ref.agent_name, limit=50) if store is not None else []
        if not threads:
            status("no threads in the local thread store yet")
        for t in threads:
            mark = "*" if t.thread_id == chat.thread_id else " "
            out.print(escape(f"{mark} {short_id(t.thread_id)}  {t.status:<7}  {t.name}"))
    elif name == "/use":
        if not arg:
            warn("usage: /use THREAD_ID (see /threads)")
            return
        try:
            chat.thread_id = await check_thread(chat.client, chat.ref, arg)
        except CliError as e:
            err.print(f"error: {escape(e.message)}", style="red")
            return
        status(f"switched to thread {short_id(chat.thread_id)}")
    else:
        status(HELP)
