"""Recovery after kill -9: `--turns` turns in flight on as many threads, the agent process (`threadline process
join`, as a user runs it) killed with SIGKILL while their model calls run, then started again at once. Prints JSON:
the restart (spawn to polling), when the dead worker's model calls began again on the new one (first, last), the
time from the kill until every turn had replied (p50, p95, last), and the exactly-once check (every turn completed,
one answer item per turn in the thread store, none lost).

    .venv/bin/python -m bench.recovery                      # 50 turns, model latency 2 s
    .venv/bin/python -m bench.recovery --turns 50 --rounds 3 --out /tmp/recovery.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import connect, new_thread_name, new_turn_id, submit_turn
from threadline.models.spec import AgentSpec
from threadline.models.thread import Turn

from bench.report import emit
from bench.turns import REPO, Child, log, percentile
from tests.fake_openai import FakeOpenAI
from tests.temporal_server import TemporalDevServer

SPEC = AgentSpec(room="bench", agent_name="recovery", model="fake-model")


def agent_argv(address: str) -> list[str]:
    return [sys.executable, "-m", "threadline.cli.app", "process", "join", "--room", SPEC.room, "--agent-name",
            SPEC.agent_name, "--model", SPEC.model, "--temporal-address", address, "--channel", "chat",
            "--http-port", "0"]


async def start_agent(address: str, env: dict[str, str], work: Path, n: int) -> tuple[Child, float]:
    """The agent process and how long it took from spawn to its `task queue` line (it polls from then on)."""
    started = time.perf_counter()
    child = Child(f"agent-{n}", agent_argv(address), env, work)
    await child.start(timeout=60)
    while "task queue" not in child.first_line:
        assert child.proc is not None and child.proc.stdout is not None
        line = await asyncio.wait_for(child.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"the agent exited before polling:\n{child.log_tail()}")
        child.first_line = line.decode().strip()
    return child, time.perf_counter() - started


async def one_round(address: str, env: dict[str, str], work: Path, fake: FakeOpenAI, turns: int,
                    n: int) -> dict[str, Any]:
    client = await connect(address)
    agent, first_start = await start_agent(address, env, work, 2 * n)
    await submit_turn(client, SPEC.ref, SPEC.ref.thread_id(new_thread_name()), Turn(turn_id=new_turn_id(), text="warm"))
    threads = [SPEC.ref.thread_id(f"{new_thread_name()}-{n}-{k}") for k in range(turns)]
    requests_before = fake.count()
    replied: dict[str, float] = {}

    async def one(thread_id: str) -> Any:
        reply = await submit_turn(client, SPEC.ref, thread_id, Turn(turn_id=new_turn_id(), text=f"job {thread_id}"))
        replied[thread_id] = time.perf_counter()
        return reply

    tasks = [asyncio.create_task(one(t)) for t in threads]
    # Killed once every turn's model call has begun, while they run.
    await fake.wait_for_async(lambda: fake.count() - requests_before >= turns, timeout=60)
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGKILL)
    killed, killed_monotonic = time.perf_counter(), time.monotonic()
    await agent.proc.wait()
    in_flight_at_kill = len(threads) - len(replied)
    model_calls_running = fake.in_flight
    restarted, restart_seconds = await start_agent(address, env, work, 2 * n + 1)
    replies = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    after = [replied[t] - killed for t in threads]
    retried = [r.received_monotonic - killed_monotonic for r in fake.requests[requests_before + turns:]]
    store = ThreadStore.for_room(SPEC.room)
    answers = [sum(1 for i in store.items(t) if i.type == "assistant") for t in threads]
    await restarted.stop()
    return {
        "turns_in_flight_at_kill": in_flight_at_kill,
        "model_calls_running_at_kill": model_calls_running,
        "first_start_seconds": round(first_start, 2),
        "restart_seconds": round(restart_seconds, 2),
        "model_calls_retried_seconds": {"first": round(min(retried), 2), "last": round(max(retried), 2)},
        "recovery_seconds": {"p50": round(percentile(after, 0.5), 2), "p95": round(percentile(after, 0.95), 2),
                             "last": round(max(after), 2)},
        "completed": sum(1 for r in replies if r.status == "completed"),
        "lost": sum(1 for a in answers if a == 0),
        "duplicated": sum(1 for a in answers if a > 1),
        "model_requests": fake.count() - requests_before,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="threadline-recovery-"))
    server = TemporalDevServer(data_dir=work / "temporal")
    fake = FakeOpenAI(default_delay=args.latency, record=True).start()
    os.environ["THREADLINE_HOME"] = str(work / "home")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "x", "OPENAI_BASE_URL": fake.base_url,
           "PYTHONUNBUFFERED": "1"}
    try:
        await server.astart()
        rounds = []
        for n in range(args.rounds):
            rounds.append(await one_round(server.address, env, work, fake, args.turns, n))
            log(f"round {n + 1}: {rounds[-1]}")
    finally:
        fake.stop()
        server.close()
    last = [r["recovery_seconds"]["last"] for r in rounds]
    return {
        "benchmark": "recovery", "turns": args.turns, "model_latency_seconds": args.latency, "rounds": rounds,
        "recovery_last_seconds_median": sorted(last)[len(last) // 2],
        "restart_seconds_median": sorted(r["restart_seconds"] for r in rounds)[len(rounds) // 2],
        "target": {"recovery_seconds": 5.0, "lost": 0, "duplicated": 0,
                   "met": all(r["recovery_seconds"]["last"] <= 5.0 and not r["lost"] and not r["duplicated"]
                              and r["completed"] == args.turns for r in rounds)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=2.0, help="the fake model's seconds per reply")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
