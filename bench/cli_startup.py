"""CLI start-up, end to end as a script pays it per call: `threadline --help`, `threadline room queue --help` and
`threadline room queue send ...` against a running Temporal dev server (started here), each run `--runs` times,
interleaved, with a pause between runs so the server is idle when each starts. Prints JSON: min, p50 and p95 wall
seconds per command, and the issue-12 targets (`--help` ≤ 0.3 s, `room queue send` ≤ 0.6 s, p50).

Two floors run in the same rounds: `client_floor` (bench/client_floor.py: the SDK's client connecting, starting one
workflow and describing its task queue, without Threadline) and `python` (an empty interpreter), so
`queue_send_over_floor_s` says what Threadline itself adds, whatever the machine's speed that minute.

Each command runs as installed: with bytecode, which pip writes when it installs a package (kept in a cache of
this run's, as this checkout's environment sets PYTHONDONTWRITEBYTECODE). `--from-source` compiles every module
on every run instead, as an editable install under PYTHONDONTWRITEBYTECODE does. `machine.foreign_cpu_share` is
the share of the machine's busy CPU used by other processes than these (run again when it is high).

    .venv/bin/python -m bench.cli_startup
    .venv/bin/python -m bench.cli_startup --runs 20 --out /tmp/cli.json
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import emit
from bench.turns import REPO, cpu_seconds, machine_busy_seconds, percentile
from tests.temporal_server import TemporalDevServer

SCRIPT = REPO / ".venv" / "bin" / "threadline"
PYTHON = REPO / ".venv" / "bin" / "python"
TARGETS = {"help": 0.3, "queue_send": 0.6}


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr[-500:]}")
    return elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="threadline-cli-"))
    server = TemporalDevServer(data_dir=work / "temporal")
    env = {**os.environ, "THREADLINE_HOME": str(work / "home")}
    if not args.from_source:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "bytecode")
    server.start()
    try:
        commands = {
            "python": [str(PYTHON), "-c", "pass"],
            "help": [str(SCRIPT), "--help"],
            "queue_help": [str(SCRIPT), "room", "queue", "--help"],
            "queue_send": [str(SCRIPT), "room", "queue", "send", "--room", "bench", "--queue", "jobs", "--json",
                           '{"prompt": "hi"}', "--temporal-address", server.address],
            "client_floor": [str(PYTHON), str(REPO / "bench" / "client_floor.py"), server.address],
        }
        for argv in commands.values():  # warm the file cache, the bytecode cache and the server
            timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        busy, ours = machine_busy_seconds(), _children_cpu_seconds() + cpu_seconds(server.pid)
        for _ in range(args.runs):
            for name, argv in commands.items():
                time.sleep(args.pause)
                times[name].append(timed(argv, env))
        busy, ours = machine_busy_seconds() - busy, _children_cpu_seconds() + cpu_seconds(server.pid) - ours
    finally:
        server.close()
    figures = {name: {"min": round(min(t), 3), "p50": round(percentile(t, 0.5), 3),
                      "p95": round(percentile(t, 0.95), 3)} for name, t in times.items()}
    return {
        "benchmark": "cli_startup", "runs": args.runs, "bytecode": not args.from_source, "seconds": figures,
        "queue_send_over_floor_s": round(figures["queue_send"]["p50"] - figures["client_floor"]["p50"], 3),
        "targets": {name: {"p50_at_most": limit, "met": figures[name]["p50"] <= limit}
                    for name, limit in TARGETS.items()},
        "machine": {"foreign_cpu_share": round(max(0.0, busy - ours) / busy, 3) if busy else 0.0},
    }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between runs")
    parser.add_argument("--from-source", action="store_true",
                        help="compile every module on every run (no bytecode), as an editable install here does")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
