"""`QueueJobWorkflow`: one small workflow per queue job, id `<room>/.queues/<queue>/<key>`.

Sending a job starts it on the queue's task queue, `threadline-queue/<room>/<queue>`, so it is durable from the
moment the sender returns and waits there until an agent consuming the queue runs a worker on that task queue.
Two consumers on one queue are two workers on one task queue: Temporal hands each job to one of them.

The job parses its payload (one that cannot become a turn ends the job `failed` with the reason), then runs
`run_queue_turn` in a consumer's worker: that activity picks the thread and submits the turn with a turn id
derived from the job, so a retried attempt (after a consumer crash) re-attaches to the same turn.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from threadline.models import (
        ErrorType,
        JobPayloadError,
        JobStatus,
        QueueJobInput,
        QueueJobPayload,
        QueueReplyRequest,
        QueueTurnRequest,
        QueueTurnResult,
    )
    from threadline.workflows.failures import failure_message
    from threadline.workflows.search_attributes import AGENT_ATTRIBUTE, JOB_STATUS_ATTRIBUTE

TURN_TIMEOUT = timedelta(hours=12)
"""Upper bound of one attempt; a dead consumer is noticed at the heartbeat timeout instead."""
HEARTBEAT_TIMEOUT = timedelta(seconds=5)
TURN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[ErrorType.JOB_PATH_ERROR, ErrorType.DUPLICATE_TURN],
)
REPLY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
MEMO_KEY = "job"
"""The job's status (without result text) as a memo, so status reads need no worker: `describe` returns it."""


def job_task_queue(room: str, queue: str) -> str:
    return f"threadline-queue/{room}/{queue}"


def job_workflow_id(room: str, queue: str, key: str) -> str:
    return f"{room}/.queues/{queue}/{key}"


def public_job_id(queue: str, key: str) -> str:
    """What users see and pass to `status`: the queue and the key, enough to find the job in its room."""
    return f"{queue}/{key}"


def job_turn_id(workflow_id: str) -> str:
    """Same job, same turn id: the thread dedupes a retried submission and returns the same reply."""
    return "queue-" + hashlib.sha256(workflow_id.encode()).hexdigest()[:32]


def job_thread_name(queue: str, key: str) -> str:
    """The name of a path-less job's new thread: derived from the job, so a retried attempt reuses it."""
    name = f"{queue}-{key}"
    if len(name) <= 100 and all(c.isalnum() or c in "-_." for c in name):
        return name
    return f"{queue}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


def job_memo(status: JobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude={"text", "usage", "metadata"})


@workflow.defn(name="QueueJobWorkflow")
class QueueJobWorkflow:
    @workflow.init
    def __init__(self, job: QueueJobInput) -> None:
        self.job = job
        self.state = JobStatus(
            job_id=public_job_id(job.queue, job.job_key), room=job.room, queue=job.queue, status="queued",
            accepted_at=job.accepted_at,
        )

    @workflow.run
    async def run(self, job: QueueJobInput) -> JobStatus:
        workflow_id = workflow.info().workflow_id
        try:
            payload = QueueJobPayload.from_raw(job.payload)
            turn = payload.to_turn(job_turn_id(workflow_id), job.queue, self.state.job_id)
        except JobPayloadError as e:
            return finish_job(self.state, "failed", error=f"the payload cannot become a turn: {e}")
        self.state.metadata = payload.metadata
        # This task runs on a consumer's worker: a consumer has the job. Its agent and thread show in the
        # activity's heartbeat details until it returns (no extra workflow task per job).
        self.state.status = "running"
        self.state.started_at = workflow.now()
        publish_job(self.state)
        try:
            result: QueueTurnResult = await workflow.execute_activity(
                "run_queue_turn",
                QueueTurnRequest(
                    room=job.room, queue=job.queue, job_id=self.state.job_id,
                    thread_name=job_thread_name(job.queue, job.job_key), path=payload.path,
                    accepted_at=job.accepted_at, turn=turn,
                ),
                result_type=QueueTurnResult,
                start_to_close_timeout=TURN_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=TURN_RETRY,
                summary=_preview(turn.text),
            )
        except ActivityError as e:
            return finish_job(self.state, "failed", error=failure_message(e))
        self.state.agent = result.agent
        self.state.thread_id = result.thread_id
        reply = result.reply
        self.state.text = reply.text
        self.state.usage = reply.usage
        if reply.status != "completed":
            return finish_job(self.state, "failed", error=reply.error or f"the turn was {reply.status}")
        if payload.reply_to:
            try:
                self.state.reply_job_id = await workflow.execute_activity(
                    "send_queue_reply",
                    QueueReplyRequest(
                        room=job.room, from_queue=job.queue, to_queue=payload.reply_to, job_id=self.state.job_id,
                        thread_id=result.thread_id, text=reply.text,
                    ),
                    result_type=str,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=REPLY_RETRY,
                    summary=f"reply to queue {payload.reply_to}",
                )
            except ActivityError as e:
                self.state.error = f"the result could not be sent to queue {payload.reply_to}: {failure_message(e)}"
        return finish_job(self.state, "completed", error=self.state.error)

    @workflow.query(name="status")
    def status(self) -> JobStatus:
        return self.state



def _preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 80 else line[:79] + "…"


def finish_job(state: JobStatus, status: Literal["completed", "failed"], error: str | None = None) -> JobStatus:
    state.status = status
    state.error = error
    state.finished_at = workflow.now()
    publish_job(state)
    return state


def publish_job(state: JobStatus) -> None:
    """The job's status and agent as search attributes, and the whole status as memo (readable with no worker)."""
    attributes = [JOB_STATUS_ATTRIBUTE.value_set(state.status)]
    if state.agent:
        attributes.append(AGENT_ATTRIBUTE.value_set(state.agent))
    workflow.upsert_search_attributes(attributes)
    workflow.upsert_memo({MEMO_KEY: job_memo(state)})
