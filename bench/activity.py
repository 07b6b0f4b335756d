"""The model activity alone, without Temporal: what Threadline's `call_model` costs a turn beyond the model call.

`bench.turns` measures whole turns, where the server, the workers and the fake model share two cores and every
figure moves by ±5 % from run to run; this runs `AgentActivities.call_model` in `temporalio.testing`'s
`ActivityEnvironment` (the real activity, the real SQLite thread store, the fake model in a process of its own) for
`--turns` sequential turns of one thread, round-robin with a bare call of the `openai` client (one message, as the
floor's activity makes it). Prints JSON: p50 of both over the last half of the turns (the thread then has
`turns` to `2 x turns` items), the difference, and the p50 of each part of the activity (timed by wrapping the
methods it calls: the input write and the window read, the prompt, the streamed call, the answer write).

    .venv/bin/python -m bench.activity                 # 190 turns, about 10 s
    .venv/bin/python -m bench.activity --turns 300 --out /tmp/activity.json

Past 200 turns the window is full (400 items) and the thread compacts: with no compaction here, those calls
return at once, so keep `--turns` under 200 to time the model call itself.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import emit

PARTS = {
    "_record_input": "input write, redelivery check, window read (one thread trip)",
    "_answered_before": "redelivery check",
    "store.items": "store reads (window and redelivery check)",
    "store.append": "store writes",
    "prompt_messages": "prompt",
    "estimate_messages": "prompt estimate",
    "_openai_completion": "streamed model call (with the first delta's publish)",
    "_write_answer": "answer and last deltas written (one thread trip)",
}


def _timed(owner: Any, name: str, label: str, times: dict[str, list[float]]) -> None:
    """Replaces `owner.name` with a wrapper that records its wall time under `label`."""
    original = getattr(owner, name)
    if asyncio.iscoroutinefunction(original):
        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                times[label].append(time.perf_counter() - started)

        setattr(owner, name, timed_async)
        return

    @functools.wraps(original)
    def timed_sync(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times[label].append(time.perf_counter() - started)

    setattr(owner, name, timed_sync)


def p50_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 3) if values else 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["THREADLINE_HOME"] = tempfile.mkdtemp(prefix="threadline-bench-activity-")
    import openai
    from temporalio.testing import ActivityEnvironment
    from threadline.activities import agent as agent_module
    from threadline.models.spec import AgentSpec
    from threadline.models.thread import ModelCallInput, ThreadItem
    from threadline.worker import build_activities

    fake = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", "--port", "0", "--latency", "0"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        base_url = fake.stdout.readline().strip()  # type: ignore[union-attr]
        spec = AgentSpec(room="bench", agent_name="activity", model="fake-model")
        activities = build_activities(spec, env={**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "x"})
        parts: dict[str, list[float]] = defaultdict(list)
        for name in ("_record_input", "_answered_before", "_openai_completion", "_write_answer"):
            _timed(activities, name, name, parts)
        for name in ("items", "append"):
            _timed(activities.store, name, f"store.{name}", parts)
        for name in ("prompt_messages", "estimate_messages"):
            _timed(agent_module, name, name, parts)
        bare = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        environment = ActivityEnvironment()
        thread_id = spec.ref.thread_id("bench-activity")
        activity_s: list[float] = []
        bare_s: list[float] = []

        async def timed(call: Callable[[], Any], into: list[float]) -> None:
            started = time.perf_counter()
            await call()
            into.append(time.perf_counter() - started)

        for n in range(args.turns):
            seq = 2 * n + 1
            text = f"turn {n}: how are you today?"
            request = ModelCallInput(thread_id=thread_id, turn_id=f"turn-{n}", answer_seq=seq + 1, new_items=[
                ThreadItem(seq=seq, turn_id=f"turn-{n}", type="user", text=text, created_at=time.time(),
                           data={"channel": "chat", "attachments": [], "metadata": {}})])
            if n == args.turns // 2:
                for values in parts.values():
                    values.clear()
            await timed(lambda: environment.run(activities.call_model, request), activity_s)
            await timed(lambda: bare.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": text}]), bare_s)
        await bare.close()
        await activities.close()
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    half = args.turns // 2
    activity_p50, bare_p50 = p50_ms(activity_s[half:]), p50_ms(bare_s[half:])
    return {
        "benchmark": "the model activity alone (ActivityEnvironment), against a bare model call",
        "turns": args.turns,
        "thread_items_measured": [2 * half, 2 * args.turns],
        "call_model_p50_ms": activity_p50,
        "bare_model_call_p50_ms": bare_p50,
        "activity_over_bare_call_ms": round(activity_p50 - bare_p50, 3),
        "parts_p50_ms": {f"{name}: {what}": p50_ms(parts[name]) for name, what in PARTS.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.activity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=190, help="sequential turns of one thread (default 190)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
