"""`--metrics-port`: one Prometheus endpoint with Threadline's counters and the Temporal SDK's own, scraped the way
Prometheus does while a real agent process (`process join`) answers turns."""

from __future__ import annotations

import asyncio
import json
import re

import httpx

from tests.cli_helpers import CliProcess, run_cli
from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.runtime_support import eventually
from tests.temporal_server import free_port


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of the one sample of `name` whose labels include `labels` (0 when there is none)."""
    for line in metrics.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


async def test_an_agent_process_serves_its_metrics(temporal_server, room: str, fake_model: FakeOpenAI):
    port = free_port()
    agent = CliProcess("process", "join", "--room", room, "--agent-name", "support", "--model", "fake-model",
                       "--temporal-address", temporal_server.address, "--channel", "chat", "--http-port", "0",
                       "--metrics-port", str(port))
    try:
        agent.wait_for_line("task queue", stream="stdout", timeout=30)
        fake_model.enqueue(FakeResponse.tool_calls([("current_time", {})]), FakeResponse.text("it is late"))
        use = ["process", "use", "--room", room, "--agent-name", "support", "--temporal-address",
               temporal_server.address]
        first = run_cli(*use, "-m", "what time is it?")
        assert first.returncode == 0, first.stderr
        assert run_cli(*use, "-m", "thanks").returncode == 0

        async def scraped() -> str | None:
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            return text if sample(text, "threadline_turns_total", status="completed") >= 2 else None

        metrics = await eventually(scraped, 30, what="two completed turns in the metrics")
        assert sample(metrics, "threadline_turns_total", channel="chat", status="completed") == 2
        assert sample(metrics, "threadline_model_calls_total", model="fake-model", outcome="stop") == 2
        assert sample(metrics, "threadline_model_calls_total", model="fake-model", outcome="tool_calls") == 1
        assert sample(metrics, "threadline_tool_calls_total", tool="current_time", outcome="ok") == 1
        assert sample(metrics, "threadline_model_tokens_total", model="fake-model", kind="prompt") > 0
        assert sample(metrics, "threadline_turn_duration_count", status="completed") == 2
        assert "temporal_workflow_completed" in metrics or "temporal_workflow_task_execution_latency" in metrics
    finally:
        agent.kill()


async def test_the_approvals_waiting_gauge_follows_the_threads(temporal_server, room: str, fake_model: FakeOpenAI):
    port = free_port()
    address = ["--temporal-address", temporal_server.address]
    agent = CliProcess("process", "join", "--room", room, "--agent-name", "support", "--model", "fake-model",
                       *address, "--channel", "chat", "--http-port", "0", "--metrics-port", str(port),
                       "--require-approval", "current_time")
    asking = None
    try:
        agent.wait_for_line("task queue", stream="stdout", timeout=30)
        fake_model.enqueue(FakeResponse.tool_calls([("current_time", {})]), FakeResponse.text("it is late"))
        asking = CliProcess("process", "use", "--room", room, "--agent-name", "support", *address, "-m", "time?")

        async def waiting(count: int) -> tuple[str] | None:
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            found = sample(text, "threadline_approvals_waiting", room=room, agent="support")
            return (text,) if found == count and "threadline_approvals_waiting" in text else None

        await eventually(lambda: waiting(1), 30, what="one approval waiting in the gauge")
        listed = await asyncio.to_thread(run_cli, "process", "approvals", "--room", room, "-o", "json", *address)
        [request] = json.loads(listed.stdout)
        approved = await asyncio.to_thread(run_cli, "process", "approve", request["approval_id"], *address)
        assert approved.returncode == 0, approved.stderr
        await eventually(lambda: waiting(0), 30, what="the gauge back at 0 after the decision")
        assert await asyncio.to_thread(asking.wait, 30) == 0
    finally:
        if asking is not None:
            asking.kill()
        agent.kill()


def test_the_dashboard_charts_only_metrics_that_exist() -> None:
    from threadline import telemetry

    from tests.cli_helpers import REPO

    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    names = {value for n in dir(telemetry) if n.isupper() and isinstance(value := getattr(telemetry, n), str)
             and value.startswith("threadline_")}
    charted = {m for p in dashboard["panels"] for t in p["targets"]
               for m in re.findall(r"(threadline_[a-z_]+?)(?:_total|_bucket)?\b", t["expr"])}
    assert charted == names
