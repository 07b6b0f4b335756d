"""`threadline room usage`: what the room's model calls cost, summed by day, thread, channel or agent, priced from the
thread store (every answer and summary keeps its model and the tokens the provider counted)."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from threadline.cli.agent_options import ModelPrices, ThreadStoreUrl
from threadline.cli.agent_spec import require
from threadline.cli.errors import usage_error
from threadline.cli.options import AgentName, Output, OutputFormat, Room
from threadline.cli.output import Verbose, out, status

USAGE_EPILOG = """\
[bold]Examples[/bold]

  threadline room usage --room support --since 7d

  threadline room usage --room support --by thread --since 30d -o json

  threadline room usage --room support --model-prices prices.yaml    (MODEL: {input: $/1M tokens, output: ...})
"""


class By(str, Enum):
    day = "day"
    thread = "thread"
    channel = "channel"
    agent = "agent"


def parse_since(value: str) -> float | None:
    """`7d`, `24h`, `90m` → a timestamp; `all` → None."""
    if value.strip().lower() == "all":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", value)
    if match is None:
        raise usage_error(f"--since {value!r}: expected a number of days, hours or minutes (7d, 24h, 90m) or all")
    seconds = int(match.group(1)) * {"d": 86400, "h": 3600, "m": 60}[match.group(2)]
    return time.time() - seconds


def ledger(rows: list[Any], by: str, prices: dict[str, Any]) -> list[dict[str, Any]]:
    """Usage rows → one entry per key: model calls, tokens, the cost of the priced ones (None when none was)."""
    from threadline.activities.pricing import cost

    entries: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "model_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": None, "unpriced_calls": 0})
    for row in rows:
        key = {"day": datetime.fromtimestamp(row.at, UTC).strftime("%Y-%m-%d"), "thread": row.thread_id,
               "channel": row.channel.split(":", 1)[0], "agent": row.agent}[by]
        entry = entries[key]
        entry["model_calls"] += row.usage.model_calls or 1
        entry["prompt_tokens"] += row.usage.prompt_tokens
        entry["completion_tokens"] += row.usage.completion_tokens
        priced = cost(row.usage, row.model, prices)
        if priced is None:
            entry["unpriced_calls"] += 1
        else:
            entry["cost_usd"] = (entry["cost_usd"] or 0.0) + priced
    return [{by: key, **value, "cost_usd": None if value["cost_usd"] is None else round(value["cost_usd"], 6)}
            for key, value in sorted(entries.items())]


def thread_costs(store: Any, agent: str | None, prices: dict[str, Any]) -> dict[str, float | None]:
    return {e["thread"]: e["cost_usd"] for e in ledger(store.usage_rows(agent=agent), "thread", prices)}


def usage(
    room: Room = None,
    agent_name: AgentName = None,
    since: Annotated[str, typer.Option("--since", help="How far back: 7d, 24h, 90m, or all.")] = "7d",
    by: Annotated[By, typer.Option("--by", case_sensitive=False, help="Sum per day, thread, channel or agent.")] = By.day,
    model_prices: ModelPrices = None,
    output: Output = OutputFormat.table,
    thread_store_url: ThreadStoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """What the room's model calls cost (tokens, and dollars for priced models), from the thread store."""
    from threadline.activities.pricing import PricesError, load_prices
    from threadline.cli.threads import room_store

    room = require(room, "--room", "THREADLINE_ROOM", "NAME")
    try:
        prices = load_prices(model_prices)
    except PricesError as e:
        raise usage_error(str(e)) from e
    store = room_store(room, thread_store_url)
    rows = store.usage_rows(agent=agent_name, since=parse_since(since)) if store is not None else []
    entries = ledger(rows, by.value, prices)
    total = ledger([r.model_copy(update={"agent": "total"}) for r in rows], "agent", prices)
    if output is OutputFormat.json:
        out.print_json(json.dumps({"room": room, "by": by.value, "entries": entries,
                                   "total": total[0] if total else None}))
        return
    if not entries:
        status(f"no model calls in room {room} in that time")
        return
    table = Table(by.value, "calls", "prompt tokens", "completion tokens", "cost (USD)")
    for entry in [*entries, *({**t, by.value: "total"} for t in total)]:
        shown = "-" if entry["cost_usd"] is None else f"{entry['cost_usd']:.4f}"
        if entry["unpriced_calls"] and entry["cost_usd"] is not None:
            shown += f" (+{entry['unpriced_calls']} unpriced)"
        table.add_row(escape(str(entry[by.value])), str(entry["model_calls"]), f"{entry['prompt_tokens']:,}",
                      f"{entry['completion_tokens']:,}", shown)
    out.print(table)
