"""`MailJobWorkflow`: one inbound mail to one mailbox, as a job on the mailbox's queue.

The SMTP server starts it (id `<room>/.queues/<queue>/mail-<hash of mailbox and Message-ID>`, so the same mail
delivered twice is one job) on the queue's task queue, where an agent with `--channel mail:ADDRESS` consumes it.
It shows in `room queue status|list` like any job. Three activities, all in the consumer's worker:

1. `prepare_mail_turn` reads the stored .eml, picks the thread (a known Message-ID in In-Reply-To/References
   continues its thread), saves attachments and builds the turn (its id derived from the job, as queue jobs do);
2. `run_queue_turn` (the queue channel's) submits the turn and waits durably for its reply;
3. `send_mail_reply` sends the answer (or a failure notice) once: its Message-ID is derived from the turn and the
   sending is recorded.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from threadline.contracts import PREPARE_MAIL_TURN, SEND_MAIL_REPLY
    from threadline.models.jobs import JobStarted, JobStatus, MailJobInput, MailReplyRequest, QueueTurnRequest
    from threadline.workflows.failures import failure_message
    from threadline.workflows.jobs import JobRun, job_thread_name, public_job_id


@workflow.defn(name="MailJobWorkflow")
class MailJobWorkflow:
    @workflow.init
    def __init__(self, job: MailJobInput) -> None:
        self.job = JobRun(JobStatus(
            job_id=public_job_id(job.queue, job.job_key), room=job.room, queue=job.queue, status="queued",
            accepted_at=job.accepted_at, metadata={"mail": {"message_id": job.message_id, "mailbox": job.mailbox}},
        ))

    @workflow.run
    async def run(self, job: MailJobInput) -> JobStatus:
        with self.job.span():
            return await self._run(job)

    async def _run(self, job: MailJobInput) -> JobStatus:
        state = self.job.state
        self.job.start()
        try:
            plan = await PREPARE_MAIL_TURN.execute(job, summary=f"mail from {job.sender}: {job.subject}"[:80])
        except ActivityError as e:
            return self.job.finish("failed", error=f"the mail could not be read: {failure_message(e)}")
        state.thread_id = plan.thread_id
        if plan.skipped or plan.turn is None or plan.envelope is None:
            state.metadata["mail"]["ignored"] = plan.skipped
            return self.job.finish("completed")
        result = await self.job.run_turn(QueueTurnRequest(
            room=job.room, queue=job.queue, job_id=state.job_id, thread_name=job_thread_name(job.queue, job.job_key),
            path=plan.thread_id, accepted_at=job.accepted_at, turn=plan.turn,
        ), summary=f"turn for mail: {plan.subject}"[:80])
        if result is None:
            return state
        reply = result.reply
        error = None if reply.status == "completed" else (reply.error or f"the turn was {reply.status}")
        try:
            state.metadata["mail"]["reply"] = await SEND_MAIL_REPLY.execute(MailReplyRequest(
                room=job.room, thread_id=result.thread_id, turn_id=plan.turn.turn_id, envelope=plan.envelope,
                status=reply.status, text=reply.text, error=reply.error,
                thread_title=plan.subject if plan.new_thread else None,
            ), summary=f"reply to {', '.join(plan.envelope.to)}"[:80])
        except ActivityError as e:
            failure = f"the reply could not be sent: {failure_message(e)}"
            error = f"{error}; {failure}" if error else failure
        return self.job.finish("completed" if reply.status == "completed" else "failed", error=error)

    @workflow.query(name="status")
    def status(self) -> JobStatus:
        return self.job.state

    @workflow.update(name="claim")
    def claim(self, started: JobStarted) -> JobStarted:
        return self.job.claim(started)
