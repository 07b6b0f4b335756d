"""Jobs: queue jobs sent to a room queue and inbound mail, each run as one turn by an agent consuming the queue."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from threadline.models.limits import validate_queue_name
from threadline.models.thread import AgentRef, Reply, Turn, TurnStatus, Usage

# The queue channel: jobs sent to a room queue, each run as one turn by an agent consuming the queue.

JobState = Literal["queued", "running", "waiting_approval", "completed", "failed"]
"""waiting_approval: running, its turn waits for a person to approve a tool call (`waiting_for`)."""
JOB_STATES: tuple[str, ...] = ("queued", "running", "completed", "failed")
_JOB_KNOWN_KEYS = {
    "prompt", "content", "path", "model", "instructions", "sender_name", "from", "attachments", "reply_to",
}


class JobPayloadError(ValueError):
    """A queue payload that cannot become a turn; the message says why."""


class JobContentItem(BaseModel):
    type: Literal["text", "file"]
    text: str | None = None
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("a file item's path is empty")
        return v

    def check(self) -> JobContentItem:
        if self.type == "text" and self.text is None:
            raise ValueError("a text item needs 'text'")
        if self.type == "file" and not self.path:
            raise ValueError("a file item needs 'path' (a room storage path)")
        return self


class QueueJobPayload(BaseModel):
    """What a job asks for. Built from the raw JSON a sender gave by `from_raw`, which documents the rules."""

    prompt: str | None = None
    content: list[JobContentItem] | None = None
    path: str | None = Field(None, description="thread path to continue; may contain {YYYY} {MM} {DD} {HH} {mm} {SS}")
    model: str | None = None
    instructions: str | None = None
    sender_name: str | None = None
    attachments: list[str] = Field(default_factory=list, description="room storage paths")
    reply_to: str | None = Field(None, description="a queue of the same room that receives the result as a job")
    metadata: dict[str, Any] = Field(default_factory=dict, description="the payload's unknown keys")
    whole_payload_as_text: bool = False

    @classmethod
    def from_raw(cls, raw: Any) -> QueueJobPayload:
        """A JSON string is a prompt; an object is read by its keys (`from` is `sender_name`, unknown keys become
        metadata); an object without `prompt` or `content`, or any other JSON value, runs with its whole JSON as
        the text. Empty payloads are refused."""
        if raw is None or raw == "" or raw == {} or raw == [] or (isinstance(raw, str) and not raw.strip()):
            raise JobPayloadError("the payload is empty: give a prompt, content, or any non-empty JSON")
        if isinstance(raw, str):
            return cls(prompt=raw)
        if not isinstance(raw, dict):
            return cls(prompt=_json_text(raw), whole_payload_as_text=True)
        known = {k: v for k, v in raw.items() if k in _JOB_KNOWN_KEYS}
        sender = known.pop("sender_name", None)
        sender_from = known.pop("from", None)
        fields: dict[str, Any] = {**known, "sender_name": sender if sender is not None else sender_from}
        fields["metadata"] = {k: v for k, v in raw.items() if k not in _JOB_KNOWN_KEYS}
        if "prompt" not in raw and "content" not in raw:
            fields["prompt"] = _json_text(raw)
            fields["whole_payload_as_text"] = True
        try:
            payload = cls.model_validate(fields)
            for item in payload.content or []:
                item.check()
        except ValueError as e:
            raise JobPayloadError(_validation_reason(e)) from e
        if payload.reply_to is not None:
            try:
                validate_queue_name(payload.reply_to, "reply_to queue")
            except ValueError as e:
                raise JobPayloadError(str(e)) from e
        if payload.path is not None and not payload.path.strip().strip("/"):
            raise JobPayloadError("'path' is empty: leave it out to run in a new thread")
        if not payload.text and not payload.all_attachments:
            raise JobPayloadError("the payload is empty: its prompt and content have no text and no files")
        return payload

    @property
    def text(self) -> str:
        parts = [self.prompt] if self.prompt else []
        parts += [item.text for item in self.content or [] if item.type == "text" and item.text]
        return "\n\n".join(parts)

    @property
    def all_attachments(self) -> list[str]:
        files = [item.path for item in self.content or [] if item.type == "file" and item.path]
        return [*self.attachments, *files]

    def to_turn(self, turn_id: str, queue: str, job_id: str) -> Turn:
        try:
            return Turn(
                turn_id=turn_id,
                channel=f"queue:{queue}",
                sender=self.sender_name or f"queue:{queue}",
                text=self.text,
                attachments=self.all_attachments,
                model=self.model,
                instructions=self.instructions,
                metadata={"queue": queue, "job_id": job_id, **({"job": self.metadata} if self.metadata else {})},
            )
        except ValueError as e:
            raise JobPayloadError(_validation_reason(e)) from e


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _validation_reason(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        parts = []
        for error in errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            message = str(error.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        return "; ".join(parts)
    return str(e)


class QueueJobInput(BaseModel):
    """The job workflow's input, as the sender started it. `payload` is the raw JSON: the job parses it, so a
    payload that cannot become a turn is recorded as a failed job, never lost."""

    room: str
    queue: str
    job_key: str
    payload: Any = None
    accepted_at: datetime


class QueueTurnRequest(BaseModel):
    """Job workflow → `run_queue_turn` in a consumer's worker."""

    room: str
    queue: str
    job_id: str
    thread_name: str = Field(description="for a job without path: the name of its new thread")
    path: str | None = None
    accepted_at: datetime
    turn: Turn


class JobStarted(BaseModel):
    """A consumer took the job: `run_queue_turn` claims it with this (the job's `claim` update; the first claim
    wins) and heartbeats it."""

    agent: str
    thread_id: str
    started_at: datetime
    ref: AgentRef | None = None
    """The claiming agent, so a retried attempt on another agent's worker runs the turn in the same thread."""


class QueueTurnResult(BaseModel):
    agent: str
    thread_id: str
    reply: Reply


class QueueReplyRequest(BaseModel):
    room: str
    from_queue: str
    to_queue: str
    job_id: str
    thread_id: str
    text: str


class JobStatus(BaseModel):
    """A job as `room queue status` shows it: the job workflow's result once it finished."""

    job_id: str
    room: str
    queue: str
    status: JobState
    thread_id: str | None = None
    agent: str | None = None
    text: str | None = None
    error: str | None = None
    accepted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    usage: Usage | None = None
    waiting_for: list[str] = Field(default_factory=list, description="approval ids the job's turn waits for")
    reply_job_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class JobAccepted(BaseModel):
    """What sending a job returns once Temporal has it."""

    job_id: str
    room: str
    queue: str
    workflow_id: str
    accepted_at: datetime
    thread_id: str | None = Field(None, description="known when the payload's path names a thread outright")
    thread: str = Field(description="the thread id, or the thread name when the consuming agent's thread dir decides")
    created: bool = Field(True, description="false when the idempotency key named a job that already existed")




class MailJobInput(BaseModel):
    """The mail job workflow's input, as the SMTP server started it: a reference to the stored .eml."""

    room: str
    queue: str
    mailbox: str
    job_key: str
    message_id: str
    eml_path: str = Field(description="room storage path of the raw message")
    subject: str = ""
    sender: str = ""
    accepted_at: datetime


class MailEnvelope(BaseModel):
    """What a reply needs from the inbound mail."""

    mailbox: str
    message_id: str
    subject: str = ""
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list, description="the reply's References header")


class MailTurnPlan(BaseModel):
    """`prepare_mail_turn` → the job: the thread, the turn, and how to answer (or why not to)."""

    thread_id: str
    new_thread: bool = False
    subject: str = ""
    turn: Turn | None = None
    envelope: MailEnvelope | None = None
    skipped: str | None = Field(None, description="why this mail runs no turn (recorded, not answered)")


class MailReplyRequest(BaseModel):
    room: str
    thread_id: str
    turn_id: str
    envelope: MailEnvelope
    status: TurnStatus
    text: str = ""
    error: str | None = None
    thread_title: str | None = Field(None, description="names a new thread after the mail's subject")
