"""What every job shares, whether a queue message or an inbound mail made it: its ids, its status (published as
memo and search attributes, readable with no worker) and its turn, run by `run_queue_turn` on a consumer."""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from typing import Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from opentelemetry import trace
    from threadline import telemetry
    from threadline.contracts import RUN_QUEUE_TURN
    from threadline.models.jobs import JobStarted, JobStatus, QueueTurnRequest, QueueTurnResult
    from threadline.workflows.failures import failure_message
    from threadline.workflows.search_attributes import AGENT_ATTRIBUTE, JOB_STATUS_ATTRIBUTE

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


class JobRun:
    """One job's status through its life, kept by its workflow (which answers the `status` query with it)."""

    def __init__(self, state: JobStatus) -> None:
        self.state = state
        self.claimed: JobStarted | None = None

    def claim(self, started: JobStarted) -> JobStarted:
        """The first consumer to claim the job runs it: a retried attempt on another agent's worker gets this claim
        back and submits to the same thread, so the job runs in one agent's thread, once."""
        if self.claimed is None:
            self.claimed = started
            self.state.agent, self.state.thread_id = started.agent, started.thread_id
        return self.claimed

    def start(self) -> None:
        self.state.status = "running"
        self.state.started_at = workflow.now()
        self.publish()

    async def run_turn(self, request: QueueTurnRequest, summary: str) -> QueueTurnResult | None:
        """The turn's result, recorded in the status; None when it could not run (the job is then finished)."""
        try:
            result = await RUN_QUEUE_TURN.execute(request, summary=summary)
        except ActivityError as e:
            self.finish("failed", error=failure_message(e))
            return None
        self.state.agent = result.agent
        self.state.thread_id = result.thread_id
        self.state.text = result.reply.text
        self.state.usage = result.reply.usage
        return result

    def span(self) -> AbstractContextManager[Any]:
        """The job as one span (with OpenTelemetry configured), from its start to `finish`: the turn it runs and the
        reply it sends are in its trace."""
        return telemetry.workflow_span(f"job {self.state.queue}", {
            "threadline.job_id": self.state.job_id, "threadline.queue": self.state.queue,
        })

    def finish(self, status: Literal["completed", "failed"], error: str | None = None) -> JobStatus:
        self.state.status = status
        self.state.error = error
        self.state.finished_at = workflow.now()
        self.publish()
        trace.get_current_span().set_attributes({"threadline.job.status": status, "threadline.thread_id":
                                                 self.state.thread_id or ""})
        telemetry.in_workflow(telemetry.JOBS, "jobs that ended, by queue and state", queue=self.state.queue,
                              state=status)
        return self.state

    def publish(self) -> None:
        attributes = [JOB_STATUS_ATTRIBUTE.value_set(self.state.status)]
        if self.state.agent:
            attributes.append(AGENT_ATTRIBUTE.value_set(self.state.agent))
        workflow.upsert_search_attributes(attributes)
        workflow.upsert_memo({MEMO_KEY: job_memo(self.state)})


def preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 80 else line[:79] + "…"
