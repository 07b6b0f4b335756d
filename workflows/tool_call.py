"""`ToolCallWorkflow`: a tool call that is a turn of another agent runs as a child of the calling thread, so the
Temporal UI links the call to the thread that made it. The child runs the same `run_tool` activity as any tool."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from threadline.contracts import RUN_TOOL, run_tool_options, tool_summary
    from threadline.models.thread import ToolCallInput, ToolOutcome


@workflow.defn(name="ToolCallWorkflow")
class ToolCallWorkflow:
    @workflow.run
    async def run(self, request: ToolCallInput) -> ToolOutcome:
        return await RUN_TOOL.execute(
            request, summary=tool_summary(request.call),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            **run_tool_options(request.call),
        )
