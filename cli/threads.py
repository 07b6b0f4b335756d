"""Reading a room's thread store for `process threads`, `messages` and `grep`, and printing it."""

from __future__ import annotations

import json
import re
from datetime import datetime

from rich.markup import escape
from rich.table import Column, Table
from threadline.activities.stores import RoomThreadStore
from threadline.activities.tools import summarize_call
from threadline.cli.errors import CliError, usage_error
from threadline.cli.options import OutputFormat
from threadline.cli.output import out
from threadline.models.thread import AgentRef, ThreadInfo, ThreadItem


def short_id(thread_id: str) -> str:
    """The last path segment: what `--thread-id` accepts back (with the agent or when unique in the room)."""
    return thread_id.rsplit("/", 1)[-1]


def resolve_thread(store: RoomThreadStore, room: str, agent_name: str | None, thread_dir: str, value: str) -> ThreadInfo:
    """A short name, a path or a full id → the thread in the store; a clear usage error when there is none."""
    value = value.strip()
    if agent_name:
        candidates = [AgentRef(room=room, agent_name=agent_name, thread_dir=thread_dir).thread_id(value)]
    elif value.startswith(f"{room}/"):
        candidates = [value.strip("/")]
    elif "/" in value.strip("/"):
        candidates = [f"{room}/{value.strip('/')}"]
    else:
        candidates = [t.thread_id for t in store.threads(limit=100_000) if short_id(t.thread_id) == value]
        if len(candidates) > 1:
            agents = ", ".join(sorted({t.split("/")[-2] if t.count("/") >= 2 else t for t in candidates}))
            raise usage_error(
                f"thread {value!r} is ambiguous in room {room} ({len(candidates)} threads, of {agents}): "
                "add --agent-name or pass the full thread id"
            )
    for thread_id in candidates:
        found = store.thread(thread_id)
        if found is not None:
            return found
    raise usage_error(
        f"no thread {value!r} in room {room}" + (f" for agent {agent_name}" if agent_name else "")
        + f"; list threads with: threadline process threads --room {room}"
        + (f" --agent-name {agent_name}" if agent_name else "")
    )


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def thread_json(info: ThreadInfo) -> dict:
    return {"id": short_id(info.thread_id), **info.model_dump()}


def print_threads(threads: list[ThreadInfo], fmt: OutputFormat, costs: dict[str, float | None] | None = None) -> None:
    """`costs`: dollars per thread id (None: a model without a price), from the cost ledger."""
    costs = costs or {}
    if fmt is OutputFormat.json:
        out.print_json(json.dumps([{**thread_json(t), "cost_usd": costs.get(t.thread_id)} for t in threads]))
        return
    if fmt is OutputFormat.table:
        headers = ("id", "agent", "status", "modified", "channel", "items", "cost")
        table = Table(*(Column(h, no_wrap=True) for h in headers), Column("name", ratio=1))
        for t in threads:
            modified = datetime.fromtimestamp(t.modified_at).strftime("%m-%d %H:%M")
            cost = costs.get(t.thread_id)
            table.add_row(short_id(t.thread_id), t.agent, t.status, modified, t.channel, str(t.items),
                          "-" if cost is None else f"${cost:.4f}", escape(t.name))
        out.print(table)
        return
    for t in threads:
        out.print(
            escape(f"{short_id(t.thread_id)}  {t.status:<7}  {_time(t.modified_at)}  {t.channel:<7}  {t.agent}  {t.name}")
        )


def item_from(item: ThreadItem) -> str:
    if item.type == "tool_result":
        return f"tool {item.tool_name or ''}".strip()
    if item.type == "summary":
        return "compaction"
    return item.sender or item.type


def summary_heading(item: ThreadItem) -> str:
    return f"earlier messages summarised (items {item.data.get('first_seq', 1)}–{item.data.get('last_seq', 0)})"


def item_text(item: ThreadItem) -> str:
    """The item as one block of text: its text, plus its tool calls."""
    parts = [item.text] if item.text else []
    if item.type == "summary":
        parts.insert(0, summary_heading(item) + ":")
    parts += [f"→ {summarize_call(c.name, c.arguments)}" for c in item.tool_calls]
    return "\n".join(parts)


def print_items(items: list[ThreadItem], fmt: OutputFormat) -> None:
    if fmt is OutputFormat.json:
        out.print_json(json.dumps([i.model_dump(mode="json") for i in items]))
        return
    if fmt is OutputFormat.table:
        table = Table("seq", "type", "from", "time", "text")
        for i in items:
            table.add_row(str(i.seq), i.type, escape(item_from(i)), _time(i.created_at), escape(item_text(i)))
        out.print(table)
        return
    for i in items:
        out.print(escape(f"[{i.seq}] {i.type} ({item_from(i)}): {item_text(i)}"))


def compile_pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as e:
        raise usage_error(f"invalid regular expression {pattern!r}: {e}") from e


def grep_items(items: list[ThreadItem], regex: re.Pattern[str]) -> list[ThreadItem]:
    return [i for i in items if regex.search(item_text(i)) or (i.tool_name and regex.search(i.tool_name))]


def store_url_of(url: str | None) -> str | None:
    """`--thread-store-url`, checked (a usage error names the accepted form)."""
    from threadline.models.spec import validate_thread_store_url

    try:
        return validate_thread_store_url(url)
    except ValueError as e:
        raise usage_error(str(e)) from e


def room_store(room: str, url: str | None = None):  # noqa: ANN202
    """The room's thread store, or None when nothing was ever stored in the room (reading creates nothing)."""
    from threadline.activities.storage import room_dir
    from threadline.activities.stores import open_thread_store
    from threadline.models.limits import validate_name

    try:
        validate_name("room", room)
    except ValueError as e:
        raise usage_error(str(e)) from e
    url = store_url_of(url)
    if url:
        try:
            return open_thread_store(room, url)
        except Exception as e:  # noqa: BLE001 - activities/pg_store.ThreadStoreUnavailable: one line
            raise CliError(str(e)) from e
    if not (room_dir(room) / "threads.sqlite3").exists():
        return None
    return open_thread_store(room)
