"""Payload encryption's cost per turn: sequential turns on one thread with and without THREADLINE_PAYLOAD_KEY,
the two alternating in blocks, in one process (the driver, both agents' workers and the fake model at 0 ms).

    .venv/bin/python -m bench.encryption [--turns 200] [--block 20] [--trace] [--out FILE]

Prints JSON: p50/p95 turn latency (ms) and this process's CPU per turn (ms) for each, and their differences.
`--trace` turns OpenTelemetry on for both (spans exported over OTLP/HTTP to a collector stub in this process): run
once with it and once without to read what tracing adds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from threadline.channels.delivery import connect, new_thread_name, new_turn_id, submit_turn
from threadline.models.spec import AgentSpec
from threadline.models.thread import Turn
from threadline.worker import run_agent

from bench.report import emit
from tests.fake_openai import FakeOpenAI
from tests.temporal_server import TemporalDevServer


def collector_stub() -> int:
    """An OTLP/HTTP endpoint that accepts and drops spans; returns its port."""
    import http.server
    import threading

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(v * 1000 for v in values)
    return {"p50": round(statistics.median(ordered), 1),
            "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1), "n": len(ordered)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.trace:
        os.environ.update(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{collector_stub()}/v1/traces",
                          OTEL_SERVICE_NAME="bench")
    with tempfile.TemporaryDirectory() as home, FakeOpenAI(record=False) as fake:
        os.environ.update(THREADLINE_HOME=home, OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="bench")
        server = TemporalDevServer()
        await server.astart()
        stops = []
        try:
            systems = {}
            for name, key in (("plain", None), ("encrypted", base64.b64encode(os.urandom(32)).decode())):
                os.environ.pop("THREADLINE_PAYLOAD_KEY", None)
                if key:
                    os.environ["THREADLINE_PAYLOAD_KEY"] = f"k1:{key}"
                client = await connect(server.address)  # the codec is chosen here, once
                spec = AgentSpec(room=f"bench-{name}", agent_name="support", model="fake-model")
                stop, ready = asyncio.Event(), asyncio.Event()
                stops.append((stop, asyncio.create_task(run_agent(client, spec, stop, ready))))
                await asyncio.wait_for(ready.wait(), 60)
                systems[name] = (client, spec, spec.ref.thread_id(new_thread_name()))
            latencies: dict[str, list[float]] = {name: [] for name in systems}
            cpu: dict[str, float] = dict.fromkeys(systems, 0.0)
            for _ in range(2):  # warm-up
                for client, spec, thread in systems.values():
                    await submit_turn(client, spec.ref, thread, Turn(turn_id=new_turn_id(), text="warm up"))
            done = 0
            while done < args.turns:
                for name, (client, spec, thread) in systems.items():
                    started_cpu = time.process_time()
                    for n in range(args.block):
                        start = time.perf_counter()
                        await submit_turn(client, spec.ref, thread, Turn(turn_id=new_turn_id(), text=f"turn {n}"))
                        latencies[name].append(time.perf_counter() - start)
                    cpu[name] += time.process_time() - started_cpu
                done += args.block
        finally:
            for stop, task in stops:
                stop.set()
                await asyncio.wait_for(task, 60)
            await server.astop()
    result = {name: {"latency_ms": ms(values), "process_cpu_ms_per_turn": round(cpu[name] * 1000 / len(values), 2)}
              for name, values in latencies.items()}
    result["traced"] = args.trace
    result["encryption_overhead"] = {
        "latency_p50_ms": round(result["encrypted"]["latency_ms"]["p50"] - result["plain"]["latency_ms"]["p50"], 1),
        "process_cpu_ms_per_turn": round(result["encrypted"]["process_cpu_ms_per_turn"]
                                         - result["plain"]["process_cpu_ms_per_turn"], 2),
    }
    emit(result, args.out)


if __name__ == "__main__":
    asyncio.run(main())
