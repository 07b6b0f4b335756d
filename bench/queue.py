"""Queue benchmark: jobs/s end to end (send → result) and queue wait, with one and with two consumers.

    .venv/bin/python -m bench.queue [--quick] [--jobs N] [--out FILE]

Starts its own Temporal dev server (temp SQLite file) and a fake OpenAI-compatible model at 0 ms latency (in this
process, on a thread of its own); each consumer is an agent process of its own (`python -m
tests.queue_consumer_process`) consuming one queue. This process only sends jobs and waits for their results.
For each consumer count: two warm-up jobs per consumer; N/10 jobs one at a time (queue wait of an idle queue);
then N jobs sent at once: jobs/s is N divided by the time from the first send to the last result, and their queue
wait includes the backlog. Queue wait is accepted → started (a consumer took the job), from each job's timings. Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from temporalio.client import Client  # noqa: E402
from threadline.channels.delivery import connect  # noqa: E402
from threadline.channels.queue_jobs import send_job, wait_for_job  # noqa: E402
from threadline.models.jobs import JobStatus
from threadline.models.spec import AgentSpec  # noqa: E402

from tests.fake_openai import FakeOpenAI  # noqa: E402
from tests.temporal_server import TemporalDevServer  # noqa: E402

QUEUE = "bench-jobs"
SEND_CONCURRENCY = 50


def log(message: str) -> None:
    print(f"[bench.queue {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def start_consumer(address: str, spec: AgentSpec) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.queue_consumer_process", address, spec.model_dump_json(), QUEUE],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, text=True,
    )
    if (proc.stdout.readline() if proc.stdout else "").strip() != "ready":
        proc.kill()
        raise RuntimeError(f"consumer did not start (exit code {proc.wait()})")
    return proc


async def run_jobs(client: Client, room: str, count: int, tag: str) -> tuple[float, list[JobStatus]]:
    gate = asyncio.Semaphore(SEND_CONCURRENCY)

    async def one(n: int) -> JobStatus:
        async with gate:
            accepted = await send_job(client, room, QUEUE, {"prompt": f"{tag} job {n}"})
        return await wait_for_job(client, room, accepted.job_id)

    start = time.monotonic()
    jobs = await asyncio.gather(*[one(n) for n in range(count)])
    return time.monotonic() - start, jobs


async def scenario(server: TemporalDevServer, client: Client, consumers: int, jobs: int) -> dict[str, Any]:
    room = f"bench-{uuid.uuid4().hex[:8]}"
    processes = []
    try:
        for n in range(consumers):
            spec = AgentSpec(room=room, agent_name=f"consumer-{n + 1}", model="fake-model")
            processes.append(await asyncio.to_thread(start_consumer, server.address, spec))
        log(f"{consumers} consumer(s) ready; warm-up")
        await run_jobs(client, room, 2 * consumers, "warm-up")
        idle = []
        for n in range(max(5, jobs // 10)):
            _, (job,) = await run_jobs(client, room, 1, f"idle {n}")
            idle.append(job)
        log(f"{jobs} jobs at once")
        elapsed, results = await run_jobs(client, room, jobs, "measured")
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    failed = [job for job in results if job.status != "completed"]
    waits = [(job.started_at - job.accepted_at).total_seconds() for job in results if job.started_at]
    latencies = [(job.finished_at - job.accepted_at).total_seconds() for job in results if job.finished_at]
    idle_waits = [(job.started_at - job.accepted_at).total_seconds() for job in idle if job.started_at]
    idle_latencies = [(job.finished_at - job.accepted_at).total_seconds() for job in idle if job.finished_at]
    by_agent: dict[str, int] = {}
    for job in results:
        by_agent[job.agent or "?"] = by_agent.get(job.agent or "?", 0) + 1
    summary = {
        "consumers": consumers,
        "jobs": jobs,
        "failed": len(failed),
        "seconds": round(elapsed, 3),
        "jobs_per_second": round(jobs / elapsed, 2),
        "queue_wait_p50_s": round(percentile(waits, 50), 3),
        "queue_wait_p95_s": round(percentile(waits, 95), 3),
        "end_to_end_p50_s": round(percentile(latencies, 50), 3),
        "end_to_end_p95_s": round(percentile(latencies, 95), 3),
        "jobs_per_consumer": by_agent,
        "one_at_a_time": {
            "jobs": len(idle),
            "queue_wait_p50_s": round(percentile(idle_waits, 50), 3),
            "queue_wait_p95_s": round(percentile(idle_waits, 95), 3),
            "end_to_end_p50_s": round(percentile(idle_latencies, 50), 3),
            "end_to_end_p95_s": round(percentile(idle_latencies, 95), 3),
        },
    }
    log(json.dumps(summary))
    return summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 jobs per scenario instead of 200")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    jobs = args.jobs or (20 if args.quick else 200)

    home = tempfile.mkdtemp(prefix="threadline-bench-queue-")
    os.environ["THREADLINE_HOME"] = home
    server = TemporalDevServer(data_dir=Path(home) / "temporal")
    with FakeOpenAI(default_delay=0.0) as fake, server:
        os.environ["OPENAI_BASE_URL"] = fake.base_url
        os.environ["OPENAI_API_KEY"] = "bench"
        log(f"Temporal dev server on {server.address}, fake model on {fake.base_url}")
        client = await connect(server.address)
        results = [await scenario(server, client, consumers, jobs) for consumers in (1, 2)]
    report = {
        "benchmark": "queue",
        "model_latency_ms": 0,
        "send_concurrency": SEND_CONCURRENCY,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "results": results,
        "notes": "jobs/s = N / (first send → last result); queue wait = accepted → started (for the N-at-once burst it includes the backlog; one_at_a_time is an idle queue); dev server on SQLite",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
