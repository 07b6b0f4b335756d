"""Helpers shared by the runtime tests (tests/test_runtime_*.py): waiting on conditions, reading the thread store,
running and stopping agent workers, walking a thread's runs and recording histories for the replay test.

Re-recording the replay histories (tests/histories/*.json): run the scenario tests with
`THREADLINE_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_runtime_*.py`; every test that calls `record_history`
overwrites its file. Commit the changed files.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from threadline.activities.thread_store import ThreadStore
from threadline.models.spec import AgentSpec
from threadline.models.thread import ThreadItem
from threadline.worker import run_agent

from tests.fake_openai import FakeRequest, FakeResponse

HISTORIES = Path(__file__).resolve().parent / "histories"
RECORD_ENV = "THREADLINE_RECORD_HISTORIES"


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Polls `check` (sync or async) until it returns something truthy (exceptions count as not yet); returns that
    value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        except Exception as e:  # e.g. the workflow does not exist yet
            last_error = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met after {timeout} s: {what or check}") from last_error
        await asyncio.sleep(interval)


def store_items(room: str, thread_id: str) -> list[ThreadItem]:
    return ThreadStore.for_room(room).items(thread_id)


def items_of_turn(room: str, thread_id: str, turn_id: str) -> list[ThreadItem]:
    return [i for i in store_items(room, thread_id) if i.turn_id == turn_id]


def prompt_texts(request: FakeRequest) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in request.messages]


@contextlib.asynccontextmanager
async def running_agent(client: Client, spec: AgentSpec) -> AsyncIterator[asyncio.Task[None]]:
    """An in-process agent worker that stops (gracefully) when the block ends, for tests that restart workers."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_agent(client, spec, stop, ready))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class Gate:
    """Holds model requests that match `predicate` until `release()`; counts how many are held."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def response(self, then: FakeResponse | None = None) -> FakeResponse:
        return FakeResponse.block(self.event, then=then, timeout=60)

    def release(self) -> None:
        self.event.set()


class ConcurrencyRecorder:
    """A fake-model script that answers `echo: <text>` after a short pause and records, per thread key, how many
    requests were being answered at once and in which order the turns reached the model."""

    def __init__(self, key: Callable[[FakeRequest], str], pause: float = 0.05) -> None:
        self.key, self.pause = key, pause
        self.current: dict[str, int] = defaultdict(int)
        self.max: dict[str, int] = defaultdict(int)
        self.order: dict[str, list[str]] = defaultdict(list)
        self.lock = threading.Lock()

    async def __call__(self, request: FakeRequest) -> FakeResponse:
        key = self.key(request)
        with self.lock:
            self.current[key] += 1
            self.max[key] = max(self.max[key], self.current[key])
            self.order[key].append(request.last_user_text)
        try:
            await asyncio.sleep(self.pause)
        finally:
            with self.lock:
                self.current[key] -= 1
        return FakeResponse.text(f"echo: {request.last_user_text}")


async def runs_of(client: Client, workflow_id: str) -> list[str]:
    """Run ids of a workflow, first run first, found by walking back from the latest run."""
    handle = client.get_workflow_handle(workflow_id)
    run_id = (await handle.describe()).run_id
    runs = [run_id]
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        if not started.continued_execution_run_id:
            return list(reversed(runs))
        run_id = started.continued_execution_run_id
        runs.append(run_id)


def event_types(history: Any) -> list[int]:
    return [e.event_type for e in history.events]


PATCH_MARKER = "core_patch"
LOCAL_ACTIVITY_MARKER = "core_local_activity"
STORED_TRANSCRIPT_SUMMARY = "where the stored transcript ends"


def marker_summaries(history: Any, name: str) -> list[str]:
    """The summaries of the history's markers named `name` (a local activity's, a patch's), in order."""
    return [json.loads(e.user_metadata.summary.data or b'""') for e in history.events
            if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and e.marker_recorded_event_attributes.marker_name == name]


def payload_json(payloads: Any) -> list[Any]:
    return [json.loads(p.data) for p in payloads.payloads]


GZIPPED_HISTORY_BYTES = 256 * 1024
"""A recorded history larger than this is kept gzipped (large turns are mostly one repeated character)."""


async def record_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """With THREADLINE_RECORD_HISTORIES=1, saves the run's history as tests/histories/<name>.json(.gz)."""
    if os.environ.get(RECORD_ENV) != "1":
        return
    text = (await handle.fetch_history()).to_json()
    HISTORIES.mkdir(exist_ok=True)
    for stale in (HISTORIES / f"{name}.json", HISTORIES / f"{name}.json.gz"):
        stale.unlink(missing_ok=True)
    if len(text) > GZIPPED_HISTORY_BYTES:
        (HISTORIES / f"{name}.json.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        (HISTORIES / f"{name}.json").write_text(text)


def recorded_histories() -> dict[str, str]:
    """Every recorded history's JSON, by scenario name."""
    found = {p.name.removesuffix(".json"): p.read_text() for p in HISTORIES.glob("*.json")}
    found |= {p.name.removesuffix(".json.gz"): gzip.decompress(p.read_bytes()).decode()
              for p in HISTORIES.glob("*.json.gz")}
    return dict(sorted(found.items()))


def activity_events(history: Any, event_type: int) -> list[Any]:
    return [e for e in history.events if e.event_type == event_type]


COMPLETED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
CONTINUED_AS_NEW = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
ACTIVITY_CANCEL_REQUESTED = EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED
ACTIVITY_CANCELED = EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED
ACTIVITY_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
