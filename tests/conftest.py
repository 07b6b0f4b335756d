"""Fixtures: one real Temporal dev server per session, a fake OpenAI-compatible model, and agent workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from temporalio.client import Client
from threadline.channels.base import ChannelAdapter
from threadline.channels.delivery import connect
from threadline.channels.mail.registry import MailStore
from threadline.models.spec import AgentSpec
from threadline.worker import run_agent

from tests.fake_openai import FakeOpenAI
from tests.mail_support import ADDRESS, Sink
from tests.temporal_server import TemporalDevServer

REPO = Path(__file__).resolve().parent.parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """On CI (CI=true) a skipped test fails: a browser or database that did not install is a red build."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run: {report.longrepr}"


@pytest.fixture(scope="session")
def temporal_server() -> TemporalDevServer:
    server = TemporalDevServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
async def temporal_client(temporal_server: TemporalDevServer) -> Client:
    return await connect(temporal_server.address)


@pytest.fixture(scope="session")
def fake_model() -> FakeOpenAI:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _model_and_home(fake_model: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets a fresh THREADLINE_HOME and talks to the fake model; no test reaches a real endpoint."""
    fake_model.reset()
    fake_model.script(None)
    home = tmp_path / "home"
    monkeypatch.setenv("THREADLINE_HOME", str(home))
    monkeypatch.setenv("OPENAI_BASE_URL", fake_model.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    return home


@pytest.fixture
def room() -> str:
    """A room of its own per test, so threads and task queues never mix between tests."""
    return f"room-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def agent_spec(room: str) -> AgentSpec:
    return AgentSpec(room=room, agent_name="support", model="fake-model")


@pytest.fixture
async def agent_worker(
    temporal_server: TemporalDevServer, temporal_client: Client
) -> AsyncIterator[Callable[..., asyncio.Task[None]]]:
    """Starts in-process agent workers with optional channel adapters; they stop at the end of the test.
    `own_client=True` gives the agent a client of its own, as a separate process would have (the SDK allows one
    worker per task queue and client)."""
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(
        spec: AgentSpec, channels: Sequence[ChannelAdapter] = (), own_client: bool = False
    ) -> asyncio.Task[None]:
        client = await connect(temporal_server.address) if own_client else temporal_client
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_agent(client, spec, stop, ready, channels))
        await asyncio.wait_for(ready.wait(), 30)
        stops.append((stop, task))
        return task

    yield start
    for stop, task in stops:
        stop.set()
    for _, task in stops:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


class AgentProcess:
    """An agent worker in a subprocess (for kill -9)."""

    def __init__(self, address: str, spec: AgentSpec) -> None:
        self.address, self.spec = address, spec
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.agent_process", self.address, self.spec.model_dump_json()],
            cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"agent process did not start (exit code {self.proc.wait()})")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def agent_process(temporal_server: TemporalDevServer) -> Callable[[AgentSpec], AgentProcess]:
    started: list[AgentProcess] = []

    def start(spec: AgentSpec) -> AgentProcess:
        process = AgentProcess(temporal_server.address, spec).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def sink() -> Sink:
    relay = Sink()
    relay.controller.start()
    yield relay
    relay.release()
    relay.controller.stop()


@pytest.fixture
def mailbox(agent_spec: AgentSpec) -> str:
    MailStore.default().create_mailbox(ADDRESS, agent_spec.room)
    return ADDRESS


@pytest.fixture(scope="session")
def rollover_server() -> TemporalDevServer:
    """A dev server that suggests continue-as-new after a few history events: every turn or two rolls over, by
    Temporal's own suggestion, as a long thread does on a default server after thousands of events."""
    server = TemporalDevServer(
        extra_args=["--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={SUGGEST_AFTER_EVENTS}"],
    )
    server.start()
    yield server
    server.close()


SUGGEST_AFTER_EVENTS = 10
