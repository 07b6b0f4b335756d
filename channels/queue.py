"""The queue channel's consuming side: an agent with `--channel queue:NAME` runs `QueueChannel(NAME).workers(...)`,
a worker on the queue's task queue hosting the job workflow and the activities that run the job's turn in one of
the agent's threads. Sending and reading jobs is `channels.queue_jobs`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from threadline.activities.heartbeat import heartbeating
from threadline.channels.approvals import telling_approvals
from threadline.channels.base import ChannelAdapter, ChannelContext, temporal_worker
from threadline.channels.delivery import DuplicateTurn, submit_until_replied
from threadline.channels.queue_jobs import job_thread_id, send_job, validate_queue
from threadline.contracts import RUN_QUEUE_TURN, SEND_QUEUE_REPLY
from threadline.models.jobs import JobPayloadError, JobStarted, QueueReplyRequest, QueueTurnRequest, QueueTurnResult
from threadline.models.limits import ErrorType
from threadline.models.spec import AgentSpec
from threadline.models.thread import AgentRef, ApprovalRequest, Reply, Turn
from threadline.workflows.jobs import job_task_queue, job_workflow_id
from threadline.workflows.queue_job import QueueJobWorkflow

if TYPE_CHECKING:
    from temporalio.worker import Worker

Announce = Callable[[ApprovalRequest, Turn], Awaitable[None]]


class QueueActivities:
    """The consumer side of a job: knows the agent (its thread dir and name) and holds the Temporal client."""

    def __init__(self, client: Client, spec: AgentSpec, announce: Announce | None = None) -> None:
        """`announce`: told once of each approval the job's turn waits for (the mail channel mails approvers)."""
        self.client = client
        self.spec = spec
        self.announce = announce

    @RUN_QUEUE_TURN.defn
    async def run_queue_turn(self, request: QueueTurnRequest) -> QueueTurnResult:
        agent = self.spec.ref
        try:
            thread_id = job_thread_id(agent, request.path, request.accepted_at, request.thread_name)
        except JobPayloadError as e:
            raise ApplicationError(str(e), type=ErrorType.JOB_PATH_ERROR, non_retryable=True) from e
        mine = JobStarted(agent=agent.agent_name, thread_id=thread_id, started_at=datetime.now(timezone.utc), ref=agent)
        # Claimed before the turn is submitted: an attempt retried on another agent's worker (the first one's
        # worker died) submits to the claimant's thread, where the turn id dedupes, instead of running it again.
        job = self.client.get_workflow_handle(
            job_workflow_id(request.room, request.queue, request.job_id.partition("/")[2]))
        started = await job.execute_update("claim", mine, result_type=JobStarted)
        if started.ref is not None:
            agent, thread_id = started.ref, started.thread_id
        async with heartbeating(started, at_start=True):
            try:
                reply = await self._until_replied(agent, thread_id, request.turn)
            except DuplicateTurn as e:
                raise ApplicationError(str(e), type=ErrorType.DUPLICATE_TURN, non_retryable=True) from e
        return QueueTurnResult(agent=agent.agent_name, thread_id=thread_id, reply=reply)

    async def _until_replied(self, agent: AgentRef, thread_id: str, turn: Turn) -> Reply:
        announce = self.announce

        async def tell(request: ApprovalRequest) -> None:
            await announce(request, turn)  # type: ignore[misc]

        return await telling_approvals(self.client, thread_id, turn.turn_id,
                                       submit_until_replied(self.client, agent, thread_id, turn),
                                       tell if announce is not None else None)

    @SEND_QUEUE_REPLY.defn
    async def send_queue_reply(self, request: QueueReplyRequest) -> str:
        """The result of a job, as a new job on its `reply_to` queue (one per job, even when retried)."""
        source = job_workflow_id(request.room, request.from_queue, request.job_id.partition("/")[2])
        key = "reply-" + hashlib.sha256(source.encode()).hexdigest()[:24]
        accepted = await send_job(
            self.client, request.room, request.to_queue,
            {
                "prompt": request.text, "from": f"queue:{request.from_queue}",
                "source_job": request.job_id, "source_thread": request.thread_id,
            },
            idempotency_key=key,
        )
        return accepted.job_id


class QueueChannel(ChannelAdapter):
    """`--channel queue:NAME`: the agent takes jobs from the room queue NAME."""

    def __init__(self, queue: str) -> None:
        self.queue = validate_queue(queue)
        self.name = f"queue:{queue}"

    def workers(self, context: ChannelContext) -> list[Worker]:
        activities = QueueActivities(context.client, context.spec)
        return [
            temporal_worker(context.client, job_task_queue(context.spec.room, self.queue), [QueueJobWorkflow],
                            [activities.run_queue_turn, activities.send_queue_reply]),
        ]
