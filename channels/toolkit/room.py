"""`Room(client, room).invoke_tool(...)`: applications and the CLI call a room's toolkits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode
from threadline.channels.approvals import telling_approvals
from threadline.channels.delivery import (
    DuplicateTurn,
    new_thread_name,
    new_turn_id,
    submit_until_replied,
)
from threadline.channels.toolkit.channel import listing_of
from threadline.channels.toolkit.schema import (
    DEFAULT_INVOKE_TIMEOUT,
    DEPTH_KEY,
    WAIT_POLL_INTERVAL,
    ToolkitOffline,
    ToolTurnFailed,
    UnknownToolkit,
    check_call,
    parse_arguments,
    task_thread_id,
)
from threadline.models.limits import validate_name
from threadline.models.thread import AgentRef, ApprovalRequest, Reply, Turn
from threadline.models.toolkit import (
    ToolkitListing,
    ToolkitState,
    ToolResult,
)
from threadline.workflows.search_attributes import ROOM_ATTRIBUTE
from threadline.workflows.toolkit import MEMO_KEY, toolkit_workflow_id

# Invoking.



async def run_turn(client: Client, agent: AgentRef, thread_id: str, turn: Turn) -> Reply:
    try:
        return await submit_until_replied(client, agent, thread_id, turn)
    except DuplicateTurn as e:
        raise ToolTurnFailed(str(e)) from e


@dataclass
class Room:
    """A room's toolkits, for applications: `await Room(client, "support").invoke_tool("billing", "run_billing_task",
    {"prompt": "..."})`. The client must use pydantic payloads (`channels.delivery.connect` does)."""

    client: Client
    room: str
    poll_interval: float = field(default=WAIT_POLL_INTERVAL, repr=False)

    def __post_init__(self) -> None:
        validate_name("room", self.room)

    async def list_toolkits(self) -> list[ToolkitListing]:
        """Every toolkit registered in the room, by name, with its online state. Enumeration goes through Temporal
        visibility (a toolkit registered a moment ago may show up a second later); each entry is read fresh."""
        query = (
            f"WorkflowType = 'ToolkitWorkflow' AND {ROOM_ATTRIBUTE.name} = '{self.room}' "
            "AND ExecutionStatus = 'Running'"
        )
        prefix = toolkit_workflow_id(self.room, "")
        names = sorted({
            execution.id.removeprefix(prefix)
            async for execution in self.client.list_workflows(query)
            if execution.id.startswith(prefix)
        })
        found = await asyncio.gather(*[self.get_toolkit(name) for name in names])
        return [listing for listing in found if listing is not None]

    async def get_toolkit(self, name: str) -> ToolkitListing | None:
        state = await self._state(name)
        return None if state is None else await listing_of(self.client, state)

    async def _state(self, name: str) -> ToolkitState | None:
        handle = self.client.get_workflow_handle(toolkit_workflow_id(self.room, name))
        try:
            description = await handle.describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if description.status != WorkflowExecutionStatus.RUNNING:
            return None
        raw = (await description.memo()).get(MEMO_KEY)
        state = ToolkitState.model_validate(raw) if raw else None
        return state if state is not None and state.info is not None else None

    async def wait_for_toolkit(self, name: str, timeout: float, tool: str | None = None,
                               arguments: Mapping[str, Any] | None = None,
                               on_wait: Callable[[str], None] | None = None) -> ToolkitListing:
        """Waits up to `timeout` seconds for the toolkit to be registered and online. The tool and the arguments
        are checked as soon as the toolkit is known, so mistakes fail at once, not after the wait. `on_wait` hears
        once that the wait has begun."""
        validate_name("toolkit name", name)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            listing = await self.get_toolkit(name)
            if listing is not None and tool is not None:
                check_call(listing, tool, arguments or {})
            if listing is not None and listing.online:
                return listing
            if time.monotonic() >= deadline:
                break
            if on_wait is not None:
                on_wait(f"toolkit {name!r} is {'offline' if listing else 'not registered'}: waiting up to "
                        f"{timeout:g} s for it")
                on_wait = None
            await asyncio.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
        waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
        if listing is None:
            others = await self.list_toolkits()
            known = ", ".join(f"{t.name} ({'online' if t.online else 'offline'})" for t in others) or "none"
            raise UnknownToolkit(
                f"there is no toolkit {name!r} in room {self.room}{waited}; toolkits: {known} "
                f"(an agent serves one with --channel toolkit:NAME)"
            )
        raise ToolkitOffline(
            f"toolkit {name!r} is offline{waited}: agent {listing.agent} is not running (no worker polls "
            f"{listing.task_queue}); start it with: threadline process join --room {self.room} "
            f"--agent-name {listing.agent} --channel toolkit:{name}"
        )

    async def invoke_tool(
        self,
        toolkit: str,
        tool: str,
        arguments: str | Mapping[str, Any],
        *,
        timeout: float = DEFAULT_INVOKE_TIMEOUT,
        turn_id: str | None = None,
        thread_name: str | None = None,
        sender: str = "toolkit",
        metadata: Mapping[str, Any] | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> ToolResult:
        """Runs the tool as one turn of the serving agent and returns its reply. `timeout` bounds the wait for the
        toolkit to come online, not the turn: once delivered, the turn is durable and this waits for its reply.
        Passing the same `turn_id` again (with the same thread) returns the same reply without running it twice."""
        args = parse_arguments(arguments, tool)
        listing = await self.wait_for_toolkit(toolkit, timeout, tool, args, on_wait)
        agent = AgentRef(room=self.room, agent_name=listing.agent, thread_dir=listing.thread_dir)
        thread_id = task_thread_id(agent, args, thread_name or new_thread_name(), tool)
        turn = Turn(
            turn_id=turn_id or new_turn_id(),
            channel=f"toolkit:{toolkit}",
            sender=sender,
            text=args["prompt"],
            model=args.get("model"),
            instructions=args.get("instructions"),
            metadata={"toolkit": toolkit, "tool": tool, DEPTH_KEY: 1, **(metadata or {})},
        )
        async def tell(request: ApprovalRequest) -> None:
            on_wait(f"the task waits for a person to approve {request.tool} {request.arguments} "  # type: ignore[misc]
                    f"(threadline process approve|deny {request.approval_id})")

        reply = await telling_approvals(self.client, thread_id, turn.turn_id,
                                        run_turn(self.client, agent, thread_id, turn),
                                        tell if on_wait is not None else None)
        if reply.status != "completed":
            raise ToolTurnFailed(
                f"{listing.agent} did not complete the task ({reply.status}): {reply.error or 'no error given'} "
                f"(thread {thread_id})",
                reply,
            )
        return ToolResult(text=reply.text, thread_id=thread_id, turn_id=turn.turn_id)
