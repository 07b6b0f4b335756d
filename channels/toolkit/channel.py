"""`ToolkitChannel`: `--channel toolkit:NAME` hosts the room's registry workflows and registers the toolkit; online state."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone

from temporalio import common
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
)
from temporalio.worker import Worker
from threadline.channels.base import ChannelAdapter, ChannelContext, temporal_worker
from threadline.channels.delivery import (
    recent_pollers,
)
from threadline.channels.toolkit.schema import toolkit_info
from threadline.models.limits import validate_name
from threadline.models.toolkit import (
    ToolkitInfo,
    ToolkitInstance,
    ToolkitListing,
    ToolkitRegistration,
    ToolkitState,
)
from threadline.workflows.search_attributes import start_attributes
from threadline.workflows.toolkit import ToolkitWorkflow, room_task_queue, toolkit_workflow_id

# Online state.


async def listing_of(client: Client, state: ToolkitState) -> ToolkitListing | None:
    info = state.info
    if info is None:
        return None
    online = False
    if state.instances:
        online = bool({i.identity for i in state.instances} & await recent_pollers(client, info.agent.task_queue))
    return ToolkitListing(
        name=info.name, room=info.room, description=info.description, agent=info.agent.agent_name,
        thread_dir=info.agent.threads_dir, task_queue=info.agent.task_queue, online=online,
        registered_at=info.registered_at, tools=info.tools,
    )


# Serving.


class ToolkitChannel(ChannelAdapter):
    """`--channel toolkit:NAME` (one adapter for all of an agent's toolkit channels): hosts the room's registry
    workflows, registers the toolkits once the agent's workers poll, and un-registers them on a graceful stop."""

    def __init__(self, *names: str) -> None:
        if not names:
            raise ValueError("a toolkit channel needs at least one toolkit name")
        self.names = [validate_name("toolkit name", n) for n in names]
        self.name = ", ".join(f"toolkit:{n}" for n in self.names)

    def workers(self, context: ChannelContext) -> list[Worker]:
        return [
            temporal_worker(context.client, room_task_queue(context.spec.room), [ToolkitWorkflow]),
        ]

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        identity = context.client.identity
        instance = ToolkitInstance(identity=identity, started_at=datetime.now(timezone.utc))
        for name in self.names:
            await register_toolkit(context.client, toolkit_info(name, context.spec.ref), instance)
        try:
            await stop.wait()
        finally:
            for name in self.names:
                with contextlib.suppress(Exception):
                    handle = context.client.get_workflow_handle(toolkit_workflow_id(context.spec.room, name))
                    await asyncio.wait_for(handle.execute_update(ToolkitWorkflow.unregister, identity), 10)


async def register_toolkit(client: Client, info: ToolkitInfo, instance: ToolkitInstance) -> ToolkitState:
    start = WithStartWorkflowOperation(
        ToolkitWorkflow.run,
        ToolkitState(room=info.room, name=info.name),
        id=toolkit_workflow_id(info.room, info.name),
        task_queue=room_task_queue(info.room),
        id_conflict_policy=common.WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=start_attributes(room=info.room, agent=info.agent.agent_name, channel="toolkit"),
    )
    return await client.execute_update_with_start_workflow(
        ToolkitWorkflow.register, ToolkitRegistration(info=info, instance=instance), start_workflow_operation=start
    )
