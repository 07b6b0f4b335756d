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

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from threadline.models import (
        ErrorType,
        JobStatus,
        MailJobInput,
        MailReplyRequest,
        MailTurnPlan,
        QueueTurnRequest,
        QueueTurnResult,
    )
    from threadline.workflows.failures import failure_message
    from threadline.workflows.queue_job import (
        HEARTBEAT_TIMEOUT,
        TURN_RETRY,
        TURN_TIMEOUT,
        finish_job,
        job_thread_name,
        public_job_id,
        publish_job,
    )

PREPARE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), non_retryable_error_types=[ErrorType.MAIL_UNREADABLE]
)
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=[ErrorType.MAIL_REJECTED, ErrorType.MAIL_CONFIG_ERROR],
)
SEND_GIVE_UP = timedelta(days=2)
"""A relay that stays down this long: the reply is given up and the error kept in the job."""


@workflow.defn(name="MailJobWorkflow")
class MailJobWorkflow:
    @workflow.init
    def __init__(self, job: MailJobInput) -> None:
        self.job = job
        self.state = JobStatus(
            job_id=public_job_id(job.queue, job.job_key), room=job.room, queue=job.queue, status="queued",
            accepted_at=job.accepted_at, metadata={"mail": {"message_id": job.message_id, "mailbox": job.mailbox}},
        )

    @workflow.run
    async def run(self, job: MailJobInput) -> JobStatus:
        self.state.status = "running"
        self.state.started_at = workflow.now()
        publish_job(self.state)
        try:
            plan: MailTurnPlan = await workflow.execute_activity(
                "prepare_mail_turn", job, result_type=MailTurnPlan,
                start_to_close_timeout=timedelta(minutes=2), retry_policy=PREPARE_RETRY,
                summary=f"mail from {job.sender}: {job.subject}"[:80],
            )
        except ActivityError as e:
            return finish_job(self.state, "failed", error=f"the mail could not be read: {failure_message(e)}")
        self.state.thread_id = plan.thread_id
        if plan.skipped or plan.turn is None or plan.envelope is None:
            self.state.metadata["mail"]["ignored"] = plan.skipped
            return finish_job(self.state, "completed")
        try:
            result: QueueTurnResult = await workflow.execute_activity(
                "run_queue_turn",
                QueueTurnRequest(
                    room=job.room, queue=job.queue, job_id=self.state.job_id,
                    thread_name=job_thread_name(job.queue, job.job_key), path=plan.thread_id,
                    accepted_at=job.accepted_at, turn=plan.turn,
                ),
                result_type=QueueTurnResult,
                start_to_close_timeout=TURN_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=TURN_RETRY,
                summary=f"turn for mail: {plan.subject}"[:80],
            )
        except ActivityError as e:
            return finish_job(self.state, "failed", error=failure_message(e))
        self.state.agent = result.agent
        self.state.thread_id = result.thread_id
        reply = result.reply
        self.state.text = reply.text
        self.state.usage = reply.usage
        error = None if reply.status == "completed" else (reply.error or f"the turn was {reply.status}")
        try:
            sent: str = await workflow.execute_activity(
                "send_mail_reply",
                MailReplyRequest(
                    room=job.room, thread_id=result.thread_id, turn_id=plan.turn.turn_id, envelope=plan.envelope,
                    status=reply.status, text=reply.text, error=reply.error,
                    thread_title=plan.subject if plan.new_thread else None,
                ),
                result_type=str,
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                schedule_to_close_timeout=SEND_GIVE_UP,
                retry_policy=SEND_RETRY,
                summary=f"reply to {', '.join(plan.envelope.to)}"[:80],
            )
            self.state.metadata["mail"]["reply"] = sent
        except ActivityError as e:
            failure = f"the reply could not be sent: {failure_message(e)}"
            error = f"{error}; {failure}" if error else failure
        return finish_job(self.state, "completed" if reply.status == "completed" else "failed", error=error)

    @workflow.query(name="status")
    def status(self) -> JobStatus:
        return self.state
