"""CLI start-up, end to end as a script pays it per call: `threadline --help`, `threadline room queue --help` and
`threadline room queue send ...` against a running Temporal dev server (started here), each run `--runs` times,
interleaved, with a pause between runs so the server is idle when each starts. Prints JSON: min, p50 and p95 wall
seconds per command, and the issue-12 targets (`--help` ≤ 0.3 s, `room queue send` ≤ 0.6 s, p50).

    .venv/bin/python -m bench.cli_startup
    .venv/bin/python -m bench.cli_startup --runs 20 --out /tmp/cli.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from threadline.workflows.search_attributes import SEARCH_ATTRIBUTES

from bench.report import emit
from bench.turns import REPO, percentile
from tests.temporal_server import TemporalDevServer

SCRIPT = REPO / ".venv" / "bin" / "threadline"
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
    server = TemporalDevServer(search_attributes={key.name: "Keyword" for key in SEARCH_ATTRIBUTES},
                               data_dir=work / "temporal")
    env = {**os.environ, "THREADLINE_HOME": str(work / "home")}
    server.start()
    try:
        commands = {
            "help": [str(SCRIPT), "--help"],
            "queue_help": [str(SCRIPT), "room", "queue", "--help"],
            "queue_send": [str(SCRIPT), "room", "queue", "send", "--room", "bench", "--queue", "jobs", "--json",
                           '{"prompt": "hi"}', "--temporal-address", server.address],
        }
        for argv in commands.values():  # warm the file cache and the server
            timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                time.sleep(args.pause)
                times[name].append(timed(argv, env))
    finally:
        server.close()
    figures = {name: {"min": round(min(t), 3), "p50": round(percentile(t, 0.5), 3),
                      "p95": round(percentile(t, 0.95), 3)} for name, t in times.items()}
    return {
        "benchmark": "cli_startup", "runs": args.runs, "seconds": figures,
        "targets": {name: {"p50_at_most": limit, "met": figures[name]["p50"] <= limit}
                    for name, limit in TARGETS.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between runs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
