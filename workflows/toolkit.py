"""`ToolkitWorkflow`: the registration of one toolkit, id `<room>/.toolkits/<NAME>`.

Why a workflow: the registration must outlive the agent that made it (a stopped agent's toolkit is listed as
offline, not forgotten) and be readable from any machine that reaches Temporal. The workflow keeps its state in its
*memo*, so `describe` and visibility queries read it with no worker running; only changes need a worker, because a
memo can only be changed from workflow code.

Why it runs on a room task queue, `threadline-room/<room>`, hosted by every agent process that serves a toolkit in
the room (and not on the serving agent's own task queue): a workflow's task queue is fixed, and another agent must
be able to take over a toolkit name whose previous agent is gone for good. An agent registers its toolkits only
after its own room worker polls, so there is always a worker when a change arrives.

Changes are updates (not signals), so the agent knows its registration is recorded before it reports ready, and a
stopping agent knows its un-registration is recorded before its worker goes away.
"""

from __future__ import annotations

import hashlib
import re

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from threadline.models.toolkit import ToolkitRegistration, ToolkitState
    from threadline.workflows.search_attributes import AGENT_ATTRIBUTE

MEMO_KEY = "toolkit"
MAX_INSTANCES = 20
"""Processes kept per toolkit: a crashed process never un-registers, so the oldest entries are dropped."""
UPDATES_PER_RUN = 500


def room_task_queue(room: str) -> str:
    return f"threadline-room/{room}"


def toolkit_workflow_id(room: str, name: str) -> str:
    return f"{room}/.toolkits/{name}"


def tool_name_for(toolkit: str) -> str:
    """`support-agent` → `run_support_agent_task`: a valid function name for every model API (at most 64 chars)."""
    normalised = re.sub(r"[^a-z0-9]+", "_", toolkit.lower()).strip("_") or "toolkit"
    if len(normalised) > 54:
        normalised = f"{normalised[:45]}_{hashlib.sha256(toolkit.encode()).hexdigest()[:8]}"
    return f"run_{normalised}_task"


@workflow.defn(name="ToolkitWorkflow")
class ToolkitWorkflow:
    @workflow.init
    def __init__(self, state: ToolkitState) -> None:
        self.state = state
        self.updates = 0

    @workflow.run
    async def run(self, state: ToolkitState) -> None:
        self._publish()
        await workflow.wait_condition(
            lambda: workflow.info().is_continue_as_new_suggested() or self.updates >= UPDATES_PER_RUN
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self.state)

    @workflow.update(name="register")
    def register(self, request: ToolkitRegistration) -> ToolkitState:
        """The agent serving the toolkit (re)registers it. Another agent taking the name over drops the previous
        agent's processes: the toolkit is the new agent's from now on."""
        self.updates += 1
        info = request.info.model_copy(update={"registered_at": workflow.now()})
        same_agent = self.state.info is not None and self.state.info.agent == info.agent
        kept = [i for i in self.state.instances if same_agent and i.identity != request.instance.identity]
        self.state = self.state.model_copy(
            update={"info": info, "instances": [*kept, request.instance][-MAX_INSTANCES:]}
        )
        workflow.upsert_search_attributes([AGENT_ATTRIBUTE.value_set(info.agent.agent_name)])
        self._publish()
        return self.state

    @workflow.update(name="unregister")
    def unregister(self, identity: str) -> ToolkitState:
        """A process stops serving the toolkit (graceful stop); the registration stays, listed offline."""
        self.updates += 1
        self.state = self.state.model_copy(
            update={"instances": [i for i in self.state.instances if i.identity != identity]}
        )
        self._publish()
        return self.state

    @workflow.query(name="state")
    def current(self) -> ToolkitState:
        return self.state

    def _publish(self) -> None:
        workflow.upsert_memo({MEMO_KEY: self.state.model_dump(mode="json")})
