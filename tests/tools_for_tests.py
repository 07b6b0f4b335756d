"""Typed tool functions for runtime tests, loaded with `--tool tests.tools_for_tests:NAME` (AgentSpec.tools).

`slow_lookup` appends its start and end times to `$THREADLINE_HOME/tool-calls.jsonl`, so a test can prove that
tool calls ran in parallel (overlapping time windows).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path


def tool_log_path() -> Path:
    return Path(os.environ["THREADLINE_HOME"]) / "tool-calls.jsonl"


async def slow_lookup(key: str, seconds: float = 1.0) -> str:
    """Looks a key up, slowly."""
    started = time.time()
    await asyncio.sleep(seconds)
    ended = time.time()
    path = tool_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"key": key, "start": started, "end": ended}) + "\n")
    return f"value of {key}"


def blocking_lookup(key: str, seconds: float = 1.0) -> str:
    """Looks a key up, slowly and without async (time.sleep blocks its thread)."""
    started = time.time()
    time.sleep(seconds)
    ended = time.time()
    with tool_log_path().open("a") as f:
        f.write(json.dumps({"key": key, "start": started, "end": ended}) + "\n")
    return f"value of {key}"


def big_output(size: int) -> str:
    """Returns `size` bytes of text."""
    line = "0123456789abcdef" * 4 + "\n"
    return (line * (size // len(line) + 1))[:size]


async def hangs(seconds: float = 3600.0) -> str:
    """Never answers within its timeout."""
    await asyncio.sleep(seconds)
    return "woke up"


hangs.timeout_seconds = 1
hangs.max_attempts = 1


def hangs_blocking(seconds: float = 3600.0) -> str:
    """Never answers within its timeout, and blocks its thread meanwhile."""
    time.sleep(seconds)
    return "woke up"


hangs_blocking.timeout_seconds = 1
hangs_blocking.max_attempts = 1


async def freezes_the_worker(seconds: float = 15.0) -> str:
    """Blocks the worker's event loop (a badly written async tool): no heartbeat, no timeout of its own fires."""
    time.sleep(seconds)
    return "thawed"


freezes_the_worker.timeout_seconds = 30
freezes_the_worker.max_attempts = 1


def ledger_path() -> Path:
    return Path(os.environ["THREADLINE_HOME"]) / "ledger.txt"


def ledger_lines() -> list[str]:
    path = ledger_path()
    return path.read_text().splitlines() if path.exists() else []


def append_line(line: str, seconds: float = 0.0) -> str:
    """Appends a line to the ledger (once per call: a retried attempt finds its idempotency key there)."""
    from threadline.activities.tools import idempotency_key

    key = idempotency_key()
    if any(entry.startswith(key + " ") for entry in ledger_lines()):
        return f"already appended {line!r}"
    time.sleep(seconds)
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"{key} {line}\n")
    return f"appended {line!r}"


append_line.requires_approval = True  # type: ignore[attr-defined]


def note_line(line: str) -> str:
    """Notes a line (asks for approval only when --require-approval names it)."""
    return f"noted {line!r}"


def shout(text: str) -> str:
    """Upper-cases a text, at once."""
    if not text:
        raise ValueError("nothing to shout")
    return text.upper()


shout.local = True  # type: ignore[attr-defined]
