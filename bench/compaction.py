"""Compaction benchmark: one long thread against a model with a small context window.

    .venv/bin/python -m bench.compaction [--turns 300] [--window 4000] [--out FILE]

Starts its own Temporal dev server, the fake OpenAI-compatible model in this process (it enforces `--window` by
its own count, characters / 3, denser than Threadline's estimate, and writes a short summary when asked for one)
and an in-process agent worker. One thread gets `--turns` sequential turns of about 300 characters each, every
7th one with a tool call whose output is 3,000 characters. Then the same thread length with
`--context-management none` and no window on the fake, for what the prompt would have been.

Prints one JSON document: prompt tokens (the fake's count) of each turn's first model call — at turn 10, 50, 100,
200 and the last, their maximum and the mean of the last 100 — for both runs; compactions and the model calls they
spent per 100 turns; and p50/p95 latency (ms) of the turns that compacted against those that did not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from threadline.activities.context_window import SUMMARY_INSTRUCTIONS, ContextBudget
from threadline.channels.delivery import connect, new_thread_name, submit_turn
from threadline.models.spec import AgentSpec, ContextSettings
from threadline.models.thread import Turn
from threadline.worker import run_agent

from bench.report import emit
from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse
from tests.temporal_server import TemporalDevServer

SUMMARY_MARK = SUMMARY_INSTRUCTIONS.split(",")[0]
FILLER = ("The customer describes the weather, the delivery van, the neighbour's dog and the colour of the parcel "
          "in great detail, none of which matters to the case. ")


def log(message: str) -> None:
    print(f"[bench.compaction {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def is_summary(request: FakeRequest) -> bool:
    return (request.messages[0].get("content") or "").startswith(SUMMARY_MARK)


def model(request: FakeRequest) -> FakeResponse | None:
    if is_summary(request):
        return FakeResponse.text("Earlier: the customer asked about a parcel and the agent looked it up. " * 6)
    return None


def turn_text(n: int) -> str:
    return f"look it up {n}\nCALL_TOOL big_output {{\"size\": 3000}}" if n % 7 == 0 else f"message {n}. " + FILLER


def ms(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(v * 1000 for v in values)
    if not ordered:
        return {"n": 0}
    return {"n": len(ordered), "p50": round(statistics.median(ordered), 1),
            "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1)}


async def run_thread(server: TemporalDevServer, fake: FakeOpenAI, spec: AgentSpec, turns: int) -> dict[str, Any]:
    client = await connect(server.address)
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_agent(client, spec, stop, ready))
    await asyncio.wait_for(ready.wait(), 60)
    thread_id = spec.ref.thread_id(new_thread_name())
    prompt_tokens: list[int] = []
    latencies: dict[bool, list[float]] = {True: [], False: []}
    summary_calls = compactions = 0
    try:
        for n in range(1, turns + 1):
            seen = len(fake.requests)
            start = time.perf_counter()
            reply = await submit_turn(client, spec.ref, thread_id, Turn(turn_id=f"t{n}", text=turn_text(n)))
            elapsed = time.perf_counter() - start
            if reply.status != "completed":
                raise RuntimeError(f"turn {n} {reply.status}: {reply.error}")
            new = fake.requests[seen:]
            summaries = [r for r in new if is_summary(r)]
            answers = [r for r in new if not is_summary(r) and r.status == 200]
            prompt_tokens.append(fake.prompt_tokens(answers[0]))
            summary_calls += len(summaries)
            compactions += bool(summaries)
            latencies[bool(summaries)].append(elapsed)
            if n % 50 == 0:
                log(f"{spec.context.management}: turn {n}, prompt {prompt_tokens[-1]} tokens, {compactions} compactions")
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
    marks = [m for m in (10, 50, 100, 200, turns) if m <= turns]
    return {
        "prompt_tokens": {**{f"turn_{m}": prompt_tokens[m - 1] for m in marks}, "max": max(prompt_tokens),
                          "mean_last_100": round(statistics.fmean(prompt_tokens[-100:]), 1)},
        "compactions": compactions,
        "compaction_model_calls": summary_calls,
        "compaction_model_calls_per_100_turns": round(summary_calls * 100 / turns, 1),
        "latency_ms": {"turns_without_compaction": ms(latencies[False]), "turns_with_compaction": ms(latencies[True])},
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--window", type=int, default=4000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["THREADLINE_HOME"] = home
        server = TemporalDevServer()
        await server.astart()
        try:
            with FakeOpenAI(chars_per_token=3) as fake:
                fake.script(model)
                os.environ.update(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="bench")
                base: dict[str, Any] = {"agent_name": "support", "model": "fake-model",
                                        "rules": ["You are the support agent of ACME."],
                                        "tools": ["tests.tools_for_tests:big_output"]}
                auto = AgentSpec(room="bench-auto", **base, context=ContextSettings(window=args.window))
                fake.context_window = args.window
                log(f"auto: {args.turns} turns, window {args.window}")
                compacted = await run_thread(server, fake, auto, args.turns)
                fake.reset()
                fake.script(model)
                fake.chars_per_token = 3
                log(f"none: {args.turns} turns, no window")
                whole = await run_thread(server, fake, AgentSpec(
                    room="bench-none", **base, context=ContextSettings(management="none")), args.turns)
        finally:
            await server.astop()
    budget = ContextBudget.of("fake-model", ContextSettings(window=args.window), None)
    on = compacted["latency_ms"]
    added = (on["turns_with_compaction"].get("p50", 0) - on["turns_without_compaction"].get("p50", 0))
    result = {
        "turns": args.turns, "window": args.window, "threshold": budget.threshold, "keep": budget.keep,
        "auto": compacted, "none": {k: whole[k] for k in ("prompt_tokens", "latency_ms")},
        "added_latency_of_a_compacting_turn_p50_ms": round(added, 1),
        "flat": compacted["prompt_tokens"]["max"] <= args.window
        and compacted["prompt_tokens"]["mean_last_100"] <= budget.threshold,
    }
    emit(result, args.out)


if __name__ == "__main__":
    asyncio.run(main())
