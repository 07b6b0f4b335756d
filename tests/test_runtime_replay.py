"""Replay: recorded histories of the runtime scenarios must replay against the current `ThreadWorkflow` code, so a
change that breaks determinism for running threads fails CI instead of stalling threads in production.

The histories in tests/histories/ were recorded by the scenario tests (plain turns, tool loop, steer, interrupt, model
failure, continue-as-new, an agent-to-agent call in a child workflow, interrupted parallel tools, steers and tool
failures handled by the patched paths, instant tools as local activities, a turn refused for the size of the queue, a
thread listed running at its model call's request, a thread whose terminated workflow's successor goes on after its
stored transcript) and by the queue, mail and toolkit tests, one for each workflow type. To re-record them after an
intended, versioned workflow change:

    THREADLINE_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_runtime_*.py tests/test_queue.py tests/test_mail.py \
        tests/test_toolkit.py

and commit the changed JSON files. Never re-record just to make this test pass: a history that no longer replays
means threads running the old code would break on deploy (use `workflow.patched` instead).
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from threadline.channels.base import temporal_worker
from threadline.channels.delivery import data_converter, new_thread_name, new_turn_id, submit_turn
from threadline.models.thread import Turn
from threadline.workflows.mail_job import MailJobWorkflow
from threadline.workflows.queue_job import QueueJobWorkflow
from threadline.workflows.thread import ThreadWorkflow
from threadline.workflows.tool_call import ToolCallWorkflow
from threadline.workflows.toolkit import ToolkitWorkflow

from tests.fake_openai import FakeResponse
from tests.runtime_support import recorded_histories
from tests.wall_clock_workflow import WallClockWorkflow

EXPECTED = {
    "plain_turns", "tool_loop", "steer", "interrupt", "model_failure", "continue_as_new", "toolkit_call",
    "interrupt_parallel_tools", "steer_after_failure", "tool_timeout_hangs", "tool_timeout_hangs_blocking",
    "tool_lost_worker", "tool_call_child", "toolkit_registry", "queue_job", "mail_job", "queue_job_claimed_retry",
    "compaction", "approval", "approval_rolls_over", "approval_resumed_after_rollover",
    "local_tools", "refused_turn", "listed_running", "stored_transcript",
}
RECORDED = recorded_histories()
WORKFLOWS = [ThreadWorkflow, ToolCallWorkflow, QueueJobWorkflow, MailJobWorkflow, ToolkitWorkflow]
"""Every workflow type the worker registers: each has a recorded history above."""


def _replayer(workflows: list[type] = WORKFLOWS) -> Replayer:
    """Workers run workflow code unsandboxed (channels/base.temporal_worker), so this full sandbox, which re-imports
    Threadline's modules and restricts every call they make, is what catches wall-clock time, randomness or I/O in
    workflow code."""
    return Replayer(workflows=workflows, data_converter=data_converter(),
                    workflow_runner=SandboxedWorkflowRunner())


def test_every_scenario_has_a_recorded_history():
    assert set(RECORDED) >= EXPECTED
    recorded_types = {WorkflowHistory.from_json(name, text).events[0]
                      .workflow_execution_started_event_attributes.workflow_type.name
                      for name, text in RECORDED.items()}
    assert recorded_types == {w.__temporal_workflow_definition.name for w in WORKFLOWS}


@pytest.mark.parametrize("name", sorted(RECORDED))
async def test_recorded_history_replays(name: str):
    history = WorkflowHistory.from_json(f"replay/{name}", RECORDED[name])
    assert len(history.events) > 5
    result = await _replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{name} no longer replays: {result.replay_failure!r}"


async def test_fresh_history_replays(temporal_client: Client, agent_spec, agent_worker, fake_model):
    """A history made by the current code replays too (catches non-determinism such as wall-clock time or random
    values used in the workflow)."""
    await agent_worker(agent_spec)
    thread_id = agent_spec.ref.thread_id(new_thread_name())
    fake_model.enqueue(FakeResponse.tool_calls([("current_time", {}), ("current_time", {})]), FakeResponse.text("ok"))
    await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="a"))
    await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="b"))
    history = await temporal_client.get_workflow_handle(thread_id).fetch_history()
    result = await _replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None


async def test_replay_sandbox_rejects_a_wall_clock_read(temporal_client: Client):
    """The guard above can fail: a workflow reading the wall clock completes on the agent's (unsandboxed) worker, and
    its history then fails to replay."""
    task_queue = f"replay-guard-{uuid.uuid4().hex[:8]}"
    async with temporal_worker(temporal_client, task_queue, [WallClockWorkflow]):
        handle = await temporal_client.start_workflow(WallClockWorkflow.run, id=task_queue, task_queue=task_queue)
        assert datetime.fromisoformat(await handle.result())
    history = await handle.fetch_history()
    result = await _replayer([WallClockWorkflow]).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "datetime.datetime.now" in str(result.replay_failure)


def test_payloads_are_the_sdks_pydantic_payloads() -> None:
    """Apps that call threads with the SDK's own `pydantic_data_converter` (as `channels/toolkit/room.py` tells them
    to) read and write the same bytes as Threadline's shared converter, and a worker's converter, rebuilt by the SDK
    for every activation, keeps decoding the same."""
    from temporalio.contrib.pydantic import pydantic_data_converter

    turn = Turn(turn_id=new_turn_id(), text="héllo", metadata={"k": [1, 2]})
    ours = data_converter().payload_converter
    sdks = pydantic_data_converter.payload_converter
    assert ours.to_payloads([turn]) == sdks.to_payloads([turn])
    assert ours.from_payloads(sdks.to_payloads([turn]), [Turn]) == [turn]
    rebuilt = dataclasses.replace(data_converter()).payload_converter
    assert rebuilt is not ours
    assert rebuilt.from_payloads(ours.to_payloads([turn, None, b"raw"]), [Turn, type(None), bytes]) == [turn, None, b"raw"]
