"""`QueueJobWorkflow`: one small workflow per queue job, id `<room>/.queues/<queue>/<key>`.

Sending a job starts it on the queue's task queue, `threadline-queue/<room>/<queue>`, so it is durable from the
moment the sender returns and waits there until an agent consuming the queue runs a worker on that task queue.
Two consumers on one queue are two workers on one task queue: Temporal hands each job to one of them.

The job parses its payload (one that cannot become a turn ends the job `failed` with the reason), then runs
`run_queue_turn` in a consumer's worker: that activity picks the thread and submits the turn with a turn id
derived from the job, so a retried attempt (after a consumer crash) re-attaches to the same turn.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from threadline.contracts import SEND_QUEUE_REPLY
    from threadline.models.jobs import (
        JobPayloadError,
        JobStarted,
        JobStatus,
        QueueJobInput,
        QueueJobPayload,
        QueueReplyRequest,
        QueueTurnRequest,
    )
    from threadline.workflows.failures import failure_message
    from threadline.workflows.jobs import JobRun, job_thread_name, job_turn_id, preview, public_job_id


@workflow.defn(name="QueueJobWorkflow")
class QueueJobWorkflow:
    @workflow.init
    def __init__(self, job: QueueJobInput) -> None:
        self.job = JobRun(JobStatus(
            job_id=public_job_id(job.queue, job.job_key), room=job.room, queue=job.queue, status="queued",
            accepted_at=job.accepted_at,
        ))

    @workflow.run
    async def run(self, job: QueueJobInput) -> JobStatus:
        with self.job.span():
            return await self._run(job)

    async def _run(self, job: QueueJobInput) -> JobStatus:
        state = self.job.state
        try:
            payload = QueueJobPayload.from_raw(job.payload)
            turn = payload.to_turn(job_turn_id(workflow.info().workflow_id), job.queue, state.job_id)
        except JobPayloadError as e:
            return self.job.finish("failed", error=f"the payload cannot become a turn: {e}")
        state.metadata = payload.metadata
        # This task runs on a consumer's worker: a consumer has the job. Its agent and thread show in the
        # activity's heartbeat details until it returns (no extra workflow task per job).
        self.job.start()
        result = await self.job.run_turn(QueueTurnRequest(
            room=job.room, queue=job.queue, job_id=state.job_id, thread_name=job_thread_name(job.queue, job.job_key),
            path=payload.path, accepted_at=job.accepted_at, turn=turn,
        ), summary=preview(turn.text))
        if result is None:
            return state
        reply = result.reply
        if reply.status != "completed":
            return self.job.finish("failed", error=reply.error or f"the turn was {reply.status}")
        if payload.reply_to:
            try:
                state.reply_job_id = await SEND_QUEUE_REPLY.execute(QueueReplyRequest(
                    room=job.room, from_queue=job.queue, to_queue=payload.reply_to, job_id=state.job_id,
                    thread_id=result.thread_id, text=reply.text,
                ), summary=f"reply to queue {payload.reply_to}")
            except ActivityError as e:
                state.error = f"the result could not be sent to queue {payload.reply_to}: {failure_message(e)}"
        return self.job.finish("completed", error=state.error)

    @workflow.query(name="status")
    def status(self) -> JobStatus:
        return self.job.state

    @workflow.update(name="claim")
    def claim(self, started: JobStarted) -> JobStarted:
        return self.job.claim(started)
