"""Queue jobs as a sender and a reader sees them: `send_job` starts a `QueueJobWorkflow` on the queue's task queue
and returns once Temporal has it, so a job is never lost, whether or not an agent consumes the queue yet;
`job_status`, `wait_for_job` and `list_jobs` read jobs back. Job ids are `QUEUE/KEY` (the key is the idempotency key
when the sender gave one), so the same key never makes two jobs. The consuming side is `channels.queue`; this module
loads none of it, so `threadline room queue send` starts without the agent runtime.

Payload rules (see `QueueJobPayload.from_raw`): a JSON string is the prompt; an object has `prompt` (string)
and/or `content` (a list of `{"type": "text", "text": ...}` and `{"type": "file", "path": ...}` items), and
optionally `path` (the thread to continue, with UTC date tokens {YYYY} {MM} {DD} {HH} {mm} {SS}), `model`,
`instructions`, `sender_name` (or `from`), `attachments` (room storage paths) and `reply_to` (a queue of the same
room that receives the result text as a new job). An object with neither `prompt` nor `content` (or any other
JSON value) runs with its whole JSON as the text. Unknown keys are kept as the job's metadata.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.service import RPCError, RPCStatusCode
from threadline.channels.approvals import thread_approvals
from threadline.channels.delivery import start_job
from threadline.models.jobs import (
    JOB_STATES,
    JobAccepted,
    JobPayloadError,
    JobStarted,
    JobStatus,
    QueueJobInput,
    QueueJobPayload,
)
from threadline.models.limits import PayloadTooLarge, check_size, validate_name, validate_queue_name
from threadline.models.thread import AgentRef
from threadline.workflows.jobs import (
    MEMO_KEY,
    job_memo,
    job_task_queue,
    job_thread_name,
    job_turn_id,
    job_workflow_id,
    public_job_id,
)
from threadline.workflows.queue_job import QueueJobWorkflow
from threadline.workflows.search_attributes import (
    JOB_STATUS_ATTRIBUTE,
    QUEUE_ATTRIBUTE,
    ROOM_ATTRIBUTE,
    start_attributes,
)

DATE_TOKENS = {"YYYY": "%Y", "MM": "%m", "DD": "%d", "HH": "%H", "mm": "%M", "SS": "%S"}
_TOKEN_RE = re.compile(r"\{([^{}]*)\}")
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")


class JobNotFound(LookupError):
    pass


class JobPathError(JobPayloadError):
    """A payload `path` that does not make a thread id."""


# Names and paths.


def validate_queue(queue: str) -> str:
    try:
        return validate_queue_name(queue)
    except ValueError as e:
        raise JobPayloadError(str(e)) from e


def validate_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise JobPayloadError(
            f"idempotency key {key!r} is not valid: use letters, digits, '.', '_', ':' or '-' (at most 200 "
            "characters, starting with a letter or digit)"
        )
    return key


def new_job_key() -> str:
    """Sortable and readable: `20261128-134501-9f2c1a7e3b`."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(5)}"


def expand_path(template: str, when: datetime) -> str:
    """Replaces the UTC date tokens {YYYY} {MM} {DD} {HH} {mm} {SS} with `when`'s; any other {...} is an error."""
    utc = when.astimezone(timezone.utc)

    def replace(match: re.Match[str]) -> str:
        token = match.group(1)
        if token not in DATE_TOKENS:
            raise JobPathError(
                f"unknown token {{{token}}} in path {template!r}: use {' '.join('{' + t + '}' for t in DATE_TOKENS)}"
            )
        return utc.strftime(DATE_TOKENS[token])

    return _TOKEN_RE.sub(replace, template)


def _check_path(path: str, template: str) -> str:
    value = path.strip().strip("/")
    parts = value.split("/")
    if not value or any(p in ("", ".", "..") or p != p.strip() for p in parts):
        raise JobPathError(f"path {template!r} does not name a thread: use segments like 'reports/{{YYYY}}-{{MM}}'")
    return value


def thread_id_for(room: str, template: str, when: datetime) -> str | None:
    """The thread id a path names outright (`dir/name`), or None for a bare name (in the agent's thread dir)."""
    value = _check_path(expand_path(template, when), template)
    if value.startswith(f"{room}/") or "/" in value:
        return AgentRef(room=room, agent_name="x").thread_id(value)
    return None


def job_thread_id(agent: AgentRef, template: str | None, when: datetime, thread_name: str) -> str:
    """The thread a job runs in: its path (date tokens expanded with the job's accepted time), or a new thread
    named after the job in the agent's thread dir."""
    if template is None:
        return agent.thread_id(thread_name)
    return agent.thread_id(_check_path(expand_path(template, when), template))


def resolve_job_workflow_id(room: str, job_id: str, queue: str | None = None) -> str:
    """`QUEUE/KEY`, a full workflow id `ROOM/.queues/QUEUE/KEY`, or a bare key with `queue`."""
    validate_name("room", room)
    value = job_id.strip()
    if value.startswith(f"{room}/.queues/"):
        return value
    if "/" in value:
        job_queue, _, key = value.partition("/")
        return job_workflow_id(room, validate_queue(job_queue), key)
    if queue is None:
        raise JobPayloadError(f"job id {job_id!r} has no queue: use QUEUE/ID as printed by send, or give the queue")
    return job_workflow_id(room, validate_queue(queue), value)


# Sending.


def check_payload_size(payload: Any) -> None:
    try:
        check_size("the job payload", len(json.dumps(payload, ensure_ascii=False).encode()),
                   'put large content in room storage and send its path: {"content": [{"type": "file", "path": '
                   '"PATH"}]} (the agent reads it with its storage tools), or split the job')
    except PayloadTooLarge as e:
        raise JobPayloadError(str(e)) from None


def check_job(room: str, queue: str, payload: Any, idempotency_key: str | None = None) -> QueueJobPayload:
    """What `send_job` checks before sending (raises `JobPayloadError`), for callers that check before connecting."""
    validate_name("room", room)
    validate_queue(queue)
    check_payload_size(payload)
    if idempotency_key is not None:
        validate_key(idempotency_key)
    parsed = QueueJobPayload.from_raw(payload)
    if parsed.path is not None:
        thread_id_for(room, parsed.path, datetime.now(timezone.utc))
    return parsed


async def send_job(
    client: Client,
    room: str,
    queue: str,
    payload: Any,
    *,
    idempotency_key: str | None = None,
    validate: bool = True,
) -> JobAccepted:
    """Starts the job and returns once Temporal has it. Raises `JobPayloadError` (nothing sent) for an invalid
    queue, key or payload; `validate=False` leaves payload checks to the job (it then fails with the reason)."""
    validate_name("room", room)
    validate_queue(queue)
    check_payload_size(payload)
    key = validate_key(idempotency_key) if idempotency_key is not None else new_job_key()
    accepted_at = datetime.now(timezone.utc)
    thread_id: str | None = None
    thread = job_thread_name(queue, key)
    if validate:
        parsed = QueueJobPayload.from_raw(payload)
        if parsed.path is not None:
            thread_id = thread_id_for(room, parsed.path, accepted_at)
            thread = thread_id or expand_path(parsed.path, accepted_at).strip("/")
    workflow_id = job_workflow_id(room, queue, key)
    accepted = JobAccepted(
        job_id=public_job_id(queue, key), room=room, queue=queue, workflow_id=workflow_id, accepted_at=accepted_at,
        thread_id=thread_id, thread=thread,
    )
    job = QueueJobInput(room=room, queue=queue, job_key=key, payload=payload, accepted_at=accepted_at)
    status = JobStatus(job_id=accepted.job_id, room=room, queue=queue, status="queued", accepted_at=accepted_at,
                       thread_id=thread_id)
    started = await start_job(
        client, QueueJobWorkflow.run, job, workflow_id=workflow_id, task_queue=job_task_queue(room, queue),
        search_attributes=start_attributes(room=room, queue=queue, channel="queue", job_status="queued"),
        memo={MEMO_KEY: job_memo(status), "thread": thread}, summary=f"queue {queue}: {_preview(payload)}",
    )
    return accepted if started else await _existing(client, accepted)


async def _existing(client: Client, accepted: JobAccepted) -> JobAccepted:
    """The job an idempotency key already made: its own accepted time and thread, not this send's."""
    description = await client.get_workflow_handle(accepted.workflow_id).describe()
    memo = await description.memo()
    job = memo.get(MEMO_KEY) or {}
    accepted_at = job.get("accepted_at") or description.start_time
    return accepted.model_copy(update={
        "created": False,
        "accepted_at": datetime.fromisoformat(accepted_at) if isinstance(accepted_at, str) else accepted_at,
        "thread_id": job.get("thread_id"),
        "thread": job.get("thread_id") or memo.get("thread") or accepted.thread,
    })


def _preview(payload: Any) -> str:
    if isinstance(payload, Mapping) and isinstance(payload.get("prompt"), str):
        text = payload["prompt"]
    elif isinstance(payload, str):
        text = payload
    else:
        text = str(payload)
    line = " ".join(text.split())
    return line if len(line) <= 80 else line[:79] + "…"


async def queue_has_consumers(client: Client, room: str, queue: str) -> bool:
    """True when an agent's worker polled the queue recently (Temporal keeps pollers for about a minute)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=job_task_queue(room, queue)),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return bool(response.pollers)


# Reading jobs.


async def job_status(client: Client, room: str, job_id: str, *, queue: str | None = None) -> JobStatus:
    """The job's status: its result once finished, else its memo (no worker needed to answer)."""
    handle = client.get_workflow_handle(resolve_job_workflow_id(room, job_id, queue), result_type=JobStatus)
    try:
        description = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise JobNotFound(f"there is no job {job_id} in room {room}") from None
        raise
    if description.status == WorkflowExecutionStatus.COMPLETED:
        return await handle.result()
    memo = await description.memo()
    known = memo.get(MEMO_KEY)
    _, _, rest = handle.id.partition("/.queues/")
    job_queue, _, key = rest.partition("/")
    status = (
        JobStatus.model_validate(known) if known
        else JobStatus(job_id=public_job_id(job_queue, key), room=room, queue=job_queue, status="queued",
                       accepted_at=description.start_time)
    )
    if description.status == WorkflowExecutionStatus.RUNNING:
        if status.status == "running" and (details := await _running_details(client, description)):
            turn_id = job_turn_id(handle.id)
            waiting = [a.approval_id for a in await thread_approvals(client, details.thread_id)
                       if a.turn_id == turn_id]
            status = status.model_copy(update={"agent": details.agent, "thread_id": details.thread_id,
                                               "waiting_for": waiting,
                                               "status": "waiting_approval" if waiting else "running"})
        return status
    state = description.status.name.lower() if description.status else "closed"
    return status.model_copy(update={
        "status": "failed", "error": f"the job's workflow was {state} in Temporal", "finished_at": description.close_time,
    })


async def wait_for_job(client: Client, room: str, job_id: str, *, queue: str | None = None) -> JobStatus:
    """Blocks until the job finished; returns its final status."""
    handle = client.get_workflow_handle(resolve_job_workflow_id(room, job_id, queue), result_type=JobStatus)
    try:
        return await handle.result()
    except WorkflowFailureError:
        return await job_status(client, room, job_id, queue=queue)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise JobNotFound(f"there is no job {job_id} in room {room}") from None
        raise


async def list_jobs(
    client: Client, room: str, queue: str, status: str | None = None, *, limit: int = 100
) -> list[JobStatus]:
    """Jobs of a queue, newest first, from Temporal visibility (eventually consistent: a job sent a moment ago,
    or its last status change, may show up a second later)."""
    validate_name("room", room)
    validate_queue(queue)
    query = f"{ROOM_ATTRIBUTE.name} = '{room}' AND {QUEUE_ATTRIBUTE.name} = '{queue}'"
    if status is not None:
        if status not in JOB_STATES:
            raise JobPayloadError(f"unknown job status {status!r}: use one of {', '.join(JOB_STATES)}")
        query += f" AND {JOB_STATUS_ATTRIBUTE.name} = '{status}'"
    jobs = []
    async for execution in client.list_workflows(query, limit=limit):
        memo = await execution.memo()
        _, _, rest = execution.id.partition("/.queues/")
        job_queue, _, key = rest.partition("/")
        job = JobStatus.model_validate(memo[MEMO_KEY]) if memo.get(MEMO_KEY) else JobStatus(
            job_id=public_job_id(job_queue, key), room=room, queue=job_queue, status="queued",
            accepted_at=execution.start_time,
        )
        listed = execution.typed_search_attributes.get(JOB_STATUS_ATTRIBUTE)
        if execution.status not in (None, WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
            listed = "failed"
        jobs.append(job.model_copy(update={"status": listed or job.status}))
    return jobs


async def _running_details(client: Client, description: WorkflowExecutionDescription) -> JobStarted | None:
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == "run_queue_turn" and pending.heartbeat_details.payloads:
            with contextlib.suppress(Exception):
                (details,) = await client.data_converter.decode(pending.heartbeat_details.payloads, [JobStarted])
                return details
    return None
