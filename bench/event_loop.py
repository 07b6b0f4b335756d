"""Event-loop benchmark: does the agent process stay responsive with many chat streams and a stalled store?

    .venv/bin/python -m bench.event_loop [--streams 200] [--turns 20] [--locks 3] [--lock-seconds 8] [--out FILE]

Starts its own Temporal dev server, a fake model whose replies stream for about 4 s, and one agent process with
the chat channel. Then:

1. idle: the agent's CPU (user + system, from /proc) over `--measure` seconds with no client;
2. streams: `--streams` SSE connections, each following a thread of its own (`GET /api/threads/{id}/events`),
   and the agent's CPU over the same time with all of them connected and idle;
3. stall: `--turns` turns start on as many of those threads while another process holds an exclusive lock on the
   room's SQLite file `--locks` times for `--lock-seconds` each (every write of the agent waits for it). Meanwhile
   `/healthz` is probed every 50 ms: its worst latency is how long the agent's event loop was blocked. When every
   turn has ended, the threads' Temporal histories are read: an activity that missed its heartbeat timeout shows
   as a timed-out attempt and a retry.

Prints one JSON document; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from temporalio.api.enums.v1 import EventType, TimeoutType  # noqa: E402
from temporalio.client import Client  # noqa: E402
from threadline.channels.chat_feed import STATUS_HOT_SECONDS  # noqa: E402

from bench.chat import chat_agent, percentile  # noqa: E402
from bench.report import emit  # noqa: E402

ROOM = "bench-loop"
TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench.event_loop {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def cpu_percent(pid: int, seconds: float) -> float:
    before, start = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return round(100 * (cpu_seconds(pid) - before) / (time.monotonic() - start), 2)


class Follower:
    def __init__(self, http: httpx.AsyncClient, thread_id: str) -> None:
        self.http, self.thread_id = http, thread_id
        self.ready = asyncio.Event()
        self.ended: set[str] = set()
        self.deltas = 0

    async def run(self) -> None:
        async with self.http.stream("GET", f"/api/threads/{self.thread_id}/events",
                                    timeout=httpx.Timeout(30, read=None)) as response:
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    data = json.loads(line[6:])
                    if event == "hello":
                        self.ready.set()
                    elif event == "delta":
                        self.deltas += 1
                    elif event == "turn" and data.get("phase") == "ended":
                        self.ended.add(data["turn_id"])


def hold_locks(db: Path, times: int, seconds: float, gap: float, held: list[float]) -> None:
    """Another writer holding the room's database: every write of the agent waits until it lets go."""
    connection = sqlite3.connect(db, timeout=30, isolation_level=None)
    for _ in range(times):
        time.sleep(gap)
        connection.execute("BEGIN EXCLUSIVE")
        start = time.monotonic()
        time.sleep(seconds)
        connection.execute("COMMIT")
        held.append(time.monotonic() - start)
    connection.close()


async def probe(http: httpx.AsyncClient, stop: asyncio.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        with contextlib.suppress(httpx.HTTPError):
            await http.get("/healthz", timeout=30)
        latencies.append(time.perf_counter() - start)
        await asyncio.sleep(0.05)


async def activity_retries(client: Client, thread_ids: list[str]) -> dict[str, int]:
    counts = {"activity_attempts_retried": 0, "heartbeat_timeouts": 0, "other_activity_timeouts": 0,
              "activity_failures": 0}
    for thread_id in thread_ids:
        history = await client.get_workflow_handle(thread_id).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED \
                    and event.activity_task_started_event_attributes.attempt > 1:
                counts["activity_attempts_retried"] += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                info = event.activity_task_timed_out_event_attributes.failure.timeout_failure_info
                key = "heartbeat_timeouts" if info.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT \
                    else "other_activity_timeouts"
                counts[key] += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
                counts["activity_failures"] += 1
    return counts


async def measure(args: argparse.Namespace, agent_pid: int, http_url: str, address: str, db: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    client = await Client.connect(address)
    limits = httpx.Limits(max_connections=args.streams + 20, max_keepalive_connections=args.streams + 20)
    async with httpx.AsyncClient(base_url=http_url, timeout=30, limits=limits) as http:
        await asyncio.sleep(2)
        log(f"idle: measuring the agent's CPU for {args.measure} s")
        out["idle_cpu_percent"] = await cpu_percent(agent_pid, args.measure)

        threads = []
        for n in range(args.streams):
            response = await http.post("/api/threads", json={"name": f"stream {n}"})
            response.raise_for_status()
            threads.append(response.json()["thread_id"])
        followers = [Follower(http, t) for t in threads]
        following = [asyncio.create_task(f.run()) for f in followers]
        await asyncio.wait_for(asyncio.gather(*(f.ready.wait() for f in followers)), 60)
        # A new stream's status is asked often for its first seconds (chat_feed.STATUS_HOT_SECONDS): idle after.
        await asyncio.sleep(STATUS_HOT_SECONDS + 3)
        log(f"{args.streams} streams connected: measuring the agent's CPU for {args.measure} s")
        out["streams_idle_cpu_percent"] = await cpu_percent(agent_pid, args.measure)

        log(f"stall: {args.turns} turns while the store is locked {args.locks} × {args.lock_seconds} s")
        stop_probe = asyncio.Event()
        latencies: list[float] = []
        probing = asyncio.create_task(probe(http, stop_probe, latencies))
        held: list[float] = []
        locker = threading.Thread(target=hold_locks, args=(db, args.locks, args.lock_seconds, 1.0, held))
        turns = {}
        started = time.monotonic()
        for n, follower in enumerate(followers[:args.turns]):
            turn_id = f"loop-{n}"
            response = await http.post(f"/api/threads/{follower.thread_id}/turns",
                                       json={"text": "tell me a long story", "turn_id": turn_id})
            response.raise_for_status()
            turns[turn_id] = follower
        locker.start()
        deadline = time.monotonic() + args.timeout
        while any(t not in f.ended for t, f in turns.items()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        ended = sum(t in f.ended for t, f in turns.items())
        elapsed = time.monotonic() - started
        await asyncio.to_thread(locker.join)
        stop_probe.set()
        await probing
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)
        out["stall"] = {
            "turns": args.turns, "turns_ended": ended, "seconds_to_end_all": round(elapsed, 2),
            "locks_held_s": [round(h, 2) for h in held],
            "deltas_streamed": sum(f.deltas for f in followers),
            "healthz_latency_ms": {"p50": round(percentile(latencies, 50) * 1000, 1),
                                   "p99": round(percentile(latencies, 99) * 1000, 1),
                                   "max": round(max(latencies) * 1000, 1), "n": len(latencies)},
            **await activity_retries(client, [f.thread_id for f in turns.values()]),
        }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with chat_agent(ROOM, args.words, args.chunk_delay) as running:
        figures = await measure(args, running.agent.pid, running.http_url, running.server.address,
                                running.home / "rooms" / ROOM / "threads.sqlite3")
    return {
        "benchmark": "agent event loop: CPU with idle chat streams, responsiveness and heartbeats with a locked store",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "settings": {"streams": args.streams, "turns": args.turns, "locks": args.locks,
                     "lock_seconds": args.lock_seconds, "reply_words": args.words, "chunk_delay_s": args.chunk_delay,
                     "measure_s": args.measure},
        **figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--locks", type=int, default=3)
    parser.add_argument("--lock-seconds", type=float, default=8.0,
                        help="longer than an activity's 3 s heartbeat timeout, so a blocked loop shows as retries")
    parser.add_argument("--words", type=int, default=80)
    parser.add_argument("--chunk-delay", type=float, default=0.05)
    parser.add_argument("--measure", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    emit(result, args.out)


if __name__ == "__main__":
    main()
