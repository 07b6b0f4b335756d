"""Deciding approvals from any channel (web, HTTP API, CLI): one way to find what waits, one way to decide.

An approval id names its thread (`<thread id>:<seq>`), so a decision goes straight to that thread's workflow as its
`decide_approval` update; the workflow answers with the decision that stands (the first one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from threadline import telemetry
from threadline.models.limits import ErrorType
from threadline.models.thread import ApprovalDecision, ApprovalOutcome, ApprovalRequest, thread_of_approval
from threadline.workflows.search_attributes import AGENT_ATTRIBUTE, ROOM_ATTRIBUTE, STATUS_ATTRIBUTE
from threadline.workflows.thread import ThreadWorkflow

POLL_SECONDS = 1.0
GAUGE_SECONDS = 5.0
log = logging.getLogger(__name__)
WAITING_THREADS = f'{STATUS_ATTRIBUTE.name} = "waiting" AND ExecutionStatus = "Running"'
Result = TypeVar("Result")


async def telling_approvals(client: Client, thread_id: str, turn_id: str, work: Awaitable[Result],
                            tell: Callable[[ApprovalRequest], Awaitable[None]] | None) -> Result:
    """Awaits `work` (a turn's reply), telling `tell` once of each approval that turn waits for meanwhile."""
    running = asyncio.ensure_future(work)
    told: set[str] = set()
    try:
        while tell is not None and not (await asyncio.wait([running], timeout=POLL_SECONDS))[0]:
            for request in await thread_approvals(client, thread_id):
                if request.turn_id == turn_id and request.approval_id not in told:
                    await tell(request)
                    told.add(request.approval_id)
        return await running
    finally:
        running.cancel()


class ApprovalError(LookupError):
    """No such approval waits (a mistyped id, a thread that does not exist), or the decision does not fit it
    (`mismatch`: other arguments than the request's)."""

    def __init__(self, message: str, *, mismatch: bool = False) -> None:
        super().__init__(message)
        self.mismatch = mismatch


async def decide_approval(client: Client, decision: ApprovalDecision) -> ApprovalOutcome:
    thread_id = thread_of_approval(decision.approval_id)
    if not thread_id:
        raise ApprovalError(f"{decision.approval_id!r} is not an approval id (they look like "
                            "ROOM/.threads/AGENT/THREAD:SEQ, as `process approvals` lists them)")
    try:
        return await client.get_workflow_handle(thread_id).execute_update(ThreadWorkflow.decide_approval, decision)
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        if isinstance(cause, ApplicationError) and cause.type in (ErrorType.NO_SUCH_APPROVAL,
                                                                   ErrorType.APPROVAL_MISMATCH):
            raise ApprovalError(cause.message, mismatch=cause.type == ErrorType.APPROVAL_MISMATCH) from e
        raise
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise ApprovalError(f"no approval {decision.approval_id} is waiting: thread {thread_id} is not "
                                "running") from e
        raise


async def thread_approvals(client: Client, thread_id: str) -> list[ApprovalRequest]:
    try:
        return await client.get_workflow_handle(thread_id).query(ThreadWorkflow.pending_approvals)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return []
        raise


async def waiting_approvals(client: Client, room: str | None = None, agent: str | None = None,
                            limit: int = 200) -> list[ApprovalRequest]:
    """Every request waiting in the threads whose status is `waiting`, oldest first."""
    query = WAITING_THREADS
    if room is not None:
        query += f' AND {ROOM_ATTRIBUTE.name} = "{room}"'
    if agent is not None:
        query += f' AND {AGENT_ATTRIBUTE.name} = "{agent}"'
    found: list[ApprovalRequest] = []
    async for execution in client.list_workflows(query, limit=limit):
        found += await thread_approvals(client, execution.id)
    return sorted(found, key=lambda r: r.requested_at)


async def report_waiting_approvals(client: Client, room: str, agent: str, stop: asyncio.Event,
                                   every: float = GAUGE_SECONDS) -> None:
    """Keeps the `approvals waiting` gauge of this agent's threads, from the threads themselves (so it is right
    after a restart, and the same in every replica); one visibility count per tick while none waits."""
    query = f'{WAITING_THREADS} AND {ROOM_ATTRIBUTE.name} = "{room}" AND {AGENT_ATTRIBUTE.name} = "{agent}"'
    while not stop.is_set():
        try:
            waiting = (await client.count_workflows(query)).count
            if waiting:
                waiting = len(await waiting_approvals(client, room, agent))
            telemetry.gauge_outside(telemetry.APPROVALS_WAITING, "tool calls waiting for a person's decision",
                                    waiting, room=room, agent=agent)
        except Exception as e:  # noqa: BLE001 - a gauge never stops the agent; the next tick tries again
            log.warning("approvals waiting: the count failed (%s); it is tried again in %s s", e, every)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
