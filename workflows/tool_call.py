"""`ToolCallWorkflow`: a tool call that is a turn of another agent runs as a child of the calling thread, so the
Temporal UI links the call to the thread that made it. The child runs the same `run_tool` activity as any tool."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from threadline.models import ToolCall, ToolCallInput, ToolOutcome

HEARTBEAT_TIMEOUT = timedelta(seconds=5)
TOOL_TIMEOUT_GRACE_SECONDS = 10.0


def run_tool_options(call: ToolCall) -> dict[str, Any]:
    """How the `run_tool` activity of one call is scheduled, from the thread or from a call's child workflow."""
    text = f"{call.name} {call.arguments}" if call.arguments not in ("", "{}") else call.name
    return {
        "result_type": ToolOutcome,
        # The activity stops the tool at its timeout and answers; Temporal's bound, a little later, is for a
        # worker that cannot answer at all.
        "start_to_close_timeout": timedelta(seconds=call.timeout_seconds + TOOL_TIMEOUT_GRACE_SECONDS),
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        "retry_policy": RetryPolicy(maximum_attempts=call.max_attempts + 1),
        "summary": "tool " + (text if len(text) <= 80 else text[:79] + "…"),
    }


@workflow.defn(name="ToolCallWorkflow")
class ToolCallWorkflow:
    @workflow.run
    async def run(self, request: ToolCallInput) -> ToolOutcome:
        return await workflow.execute_activity(
            "run_tool",
            request,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            **run_tool_options(request.call),
        )
