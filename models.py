"""Pydantic models for every message that crosses a boundary: channel → workflow, workflow → activity, worker config.

Field names are a durable contract: they end up in Temporal histories, so fields are only ever added (with defaults).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator

MAX_TURN_TEXT_BYTES = 256 * 1024
"""Turn text beyond this goes to room storage as an attachment; it would bloat every history that carries it."""
MAX_PAYLOAD_BYTES = 256 * 1024
"""What one message from outside (a job payload, a steer, toolkit arguments) may put into a Temporal payload;
Temporal refuses payloads past 2 MiB, and every history that carries one grows by its size."""


class PayloadTooLarge(ValueError):
    """Content over the size a Temporal payload may carry; the message names the size, the limit and the fix."""


def check_size(what: str, size: int, fix: str, limit: int = MAX_PAYLOAD_BYTES) -> None:
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size:,} bytes, over the {limit:,} byte limit: {fix}")


def text_limit(what: str, fix: str) -> AfterValidator:
    """A text field's size check (MAX_TURN_TEXT_BYTES), raising `PayloadTooLarge` inside the ValidationError."""

    def check(value: str) -> str:
        check_size(what, len(value.encode()), fix, MAX_TURN_TEXT_BYTES)
        return value

    return AfterValidator(check)

ThreadStatus = Literal["idle", "running", "failed"]
TurnStatus = Literal["completed", "failed", "cancelled"]

_ROOM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def validate_name(kind: str, value: str) -> str:
    """Rooms and agent names become path segments, task queues and search attribute values."""
    if not _ROOM_RE.match(value):
        raise ValueError(
            f"{kind} {value!r} is not valid: use letters, digits, '.', '_' or '-' (at most 63 characters, "
            "starting with a letter or digit)"
        )
    return value


_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,253}$")


def validate_queue_name(value: str, kind: str = "queue") -> str:
    """Queue names become task-queue names, workflow-id and storage-path segments; an email address is one (the
    mail channel's queue defaults to nothing else), so `@` and `+` are allowed, `/`, whitespace and control
    characters are not."""
    if not value or not value.strip():
        raise ValueError(f"the {kind} name is empty")
    if not _QUEUE_RE.match(value):
        raise ValueError(
            f"{kind} {value!r} is not valid: use letters, digits, '.', '_', '-', '@' or '+' (at most 254 characters, "
            "starting with a letter or digit)"
        )
    return value


class ErrorType:
    """`ApplicationError.type` of the failures that callers tell apart: workflows, activities and channels match on
    these constants, never on message text."""

    DUPLICATE_TURN = "DuplicateTurn"
    """The turn id already ran in this thread and its reply is no longer kept."""
    THREAD_ROLLING_OVER = "ThreadRollingOver"
    """The thread is about to continue-as-new and takes no more updates: deliver by signal."""
    MODEL_UNAVAILABLE = "ModelUnavailable"
    MODEL_REQUEST_REJECTED = "ModelRequestRejected"
    MODEL_CONFIG_ERROR = "ModelConfigError"
    MODEL_FAILED = "ModelFailed"
    MODEL_OUTPUT_TRUNCATED = "ModelOutputTruncated"
    JOB_PATH_ERROR = "JobPathError"
    MAIL_CONFIG_ERROR = "MailConfigError"
    MAIL_REJECTED = "MailRejected"
    MAIL_UNAVAILABLE = "MailUnavailable"
    MAIL_UNREADABLE = "MailUnreadable"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    model_calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            model_calls=self.model_calls + other.model_calls,
        )


class AgentRef(BaseModel):
    """Where an agent's threads live in Temporal: enough for any process to address them."""

    room: str
    agent_name: str
    thread_dir: str = ""

    @field_validator("room")
    @classmethod
    def _room(cls, v: str) -> str:
        return validate_name("room", v)

    @field_validator("agent_name")
    @classmethod
    def _agent(cls, v: str) -> str:
        return validate_name("agent name", v)

    @property
    def threads_dir(self) -> str:
        return (self.thread_dir or f".threads/{self.agent_name}").strip("/")

    @property
    def task_queue(self) -> str:
        return f"threadline/{self.room}/{self.agent_name}"

    def thread_id(self, name_or_path: str) -> str:
        """The workflow id of a thread: `room/thread-dir/name`. Accepts a bare name, a path, or a full id."""
        value = name_or_path.strip().strip("/")
        if value.startswith(f"{self.room}/"):
            return value
        if "/" in value:
            return f"{self.room}/{value}"
        return f"{self.room}/{self.threads_dir}/{value}"


class Turn(BaseModel):
    """One unit of work handed to a thread by a channel."""

    turn_id: str = Field(min_length=1, max_length=200)
    channel: str = "chat"
    sender: str = "user"
    text: Annotated[str, text_limit("the turn text", "save large content to room storage and attach it instead")] = ""
    attachments: list[str] = Field(default_factory=list, description="room storage paths")
    model: str | None = None
    instructions: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, description="what the channel needs to deliver the reply")


class Steer(BaseModel):
    """Extra input for the running turn, applied at its next model call."""

    text: Annotated[str, Field(min_length=1), text_limit("the steer text", "send large content as a turn with an attachment")]
    turn_id: str | None = None
    sender: str = "user"


class Interrupt(BaseModel):
    turn_id: str | None = None


class Reply(BaseModel):
    thread_id: str
    turn_id: str
    status: TurnStatus
    text: str = ""
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    steps: int = 0


class ThreadItem(BaseModel):
    """One persisted entry of a thread, in the thread store."""

    seq: int
    turn_id: str
    type: Literal["user", "assistant", "tool_result", "status", "error"]
    text: str = ""
    sender: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: float = 0.0


class ToolCall(BaseModel):
    call_id: str
    name: str
    arguments: str = "{}"
    timeout_seconds: float = 60.0
    max_attempts: int = 3
    calls_agent: bool = Field(False, description="run in a child workflow: a turn of another agent")


class ThreadInfo(BaseModel):
    """What `process threads` lists."""

    thread_id: str
    room: str
    agent: str
    name: str
    status: ThreadStatus
    channel: str
    created_at: float
    modified_at: float
    items: int = 0
    usage: Usage = Field(default_factory=Usage)
    archived: bool = False


class ThreadState(BaseModel):
    """All of a thread workflow's state, so continue-as-new carries it in one value."""

    thread_id: str
    room: str
    agent_name: str
    channel: str = "chat"
    next_seq: int = 1
    queue: list[Turn] = Field(default_factory=list)
    recent_replies: list[Reply] = Field(default_factory=list)
    seen_turn_ids: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    turns_completed: int = 0
    last_error: str | None = None


class ThreadStart(BaseModel):
    state: ThreadState


class ThreadSnapshot(BaseModel):
    """Answer to the `snapshot` query."""

    thread_id: str
    status: ThreadStatus
    running_turn_id: str | None
    queued_turn_ids: list[str]
    next_seq: int
    turns_completed: int
    usage: Usage
    last_error: str | None
    run_updates: int
    recent_replies: list[Reply] = Field(
        default_factory=list, description="the last turns' replies, text cut short; every item is in the thread store"
    )


class ModelCallInput(BaseModel):
    """The model activity gets references, never the transcript: it rebuilds the prompt from the thread store."""

    thread_id: str
    turn_id: str
    answer_seq: int = Field(description="where the model's answer goes; new items carry their own seq")
    new_items: list[ThreadItem] = Field(default_factory=list)
    model: str | None = None
    instructions: str | None = None
    step: int = 0


class ModelStep(BaseModel):
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    model: str
    max_steps: int = Field(description="from the worker's configuration, so a restarted agent's setting applies")


class ToolCallInput(BaseModel):
    thread_id: str
    turn_id: str
    seq: int
    call: ToolCall


class ToolOutcome(BaseModel):
    call_id: str
    name: str
    ok: bool
    summary: str


class OutcomeRecord(BaseModel):
    """Written when a turn ends without a model answer (failed or cancelled): the input, then the error."""

    thread_id: str
    turn_id: str
    items: list[ThreadItem]
    thread_status: ThreadStatus


ThreadItem.model_rebuild()


def validate_storage_url(url: str | None) -> str | None:
    """`s3://BUCKET[/PREFIX]`, `file:///DIR` or a directory (room storage of every room under it); '' is none."""
    url = (url or "").strip()
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "s3":
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", rest.partition("/")[0]):
            raise ValueError(f"storage URL {url!r}: expected s3://BUCKET[/PREFIX] with a valid bucket name")
    elif sep and scheme != "file":
        raise ValueError(f"storage URL {url!r}: expected s3://BUCKET[/PREFIX], file:///DIR or a directory")
    return url


def validate_thread_store_url(url: str | None) -> str | None:
    """`postgresql://USER:PASSWORD@HOST:PORT/DB` (or `postgres://`): the shared thread store; '' is none (SQLite)."""
    url = (url or "").strip()
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres") or not rest:
        shown = url if "@" not in url else scheme + "://…@" + url.rpartition("@")[2]
        raise ValueError(f"thread store URL {shown!r}: expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    return url


class AgentSpec(BaseModel):
    """An agent process's configuration: the worker reads rules, tools and limits from here at every turn."""

    room: str
    agent_name: str
    rules: list[str] = Field(default_factory=list)
    rules_files: list[str] = Field(default_factory=list)
    model: str = "gpt-4o-mini"
    model_base_url: str | None = None
    channels: list[str] = Field(default_factory=list)
    threading_mode: Literal["none", "default-new"] = "default-new"
    thread_dir: str = ""
    storage: bool = False
    require_storage: bool = False
    storage_url: str | None = Field(
        None, description="room storage: s3://BUCKET[/PREFIX] or a directory; none: ~/.threadline/rooms/ROOM/storage"
    )
    thread_store_url: str | None = Field(
        None, description="shared thread store: postgresql://USER:PASSWORD@HOST:PORT/DB; none: the room's SQLite file"
    )
    tools: list[str] = Field(default_factory=list)
    max_steps: int = Field(12, ge=1, le=1000)
    temporal_address: str | None = None
    namespace: str = "default"
    use_toolkits: list[str] = Field(
        default_factory=list, description="toolkits of the room this agent may call: NAME or NAME?timeout=SECONDS"
    )
    mail: MailSettings = Field(default_factory=lambda: MailSettings(), description="the mail channel's settings")
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(), description="the chat channel's HTTP server")
    web: WebSettings = Field(default_factory=lambda: WebSettings(), description="--web-fetch and --web-search")
    mcp: McpSettings = Field(default_factory=lambda: McpSettings(), description="--mcp servers and --mcp-serve-port")

    @field_validator("room")
    @classmethod
    def _room(cls, v: str) -> str:
        return validate_name("room", v)

    @field_validator("agent_name")
    @classmethod
    def _agent(cls, v: str) -> str:
        return validate_name("agent name", v)

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        return validate_storage_url(v)

    @field_validator("thread_store_url")
    @classmethod
    def _thread_store_url(cls, v: str | None) -> str | None:
        return validate_thread_store_url(v)

    @property
    def ref(self) -> AgentRef:
        return AgentRef(room=self.room, agent_name=self.agent_name, thread_dir=self.thread_dir)


# The queue channel: jobs sent to a room queue, each run as one turn by an agent consuming the queue.

JobState = Literal["queued", "running", "completed", "failed"]
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
    """Signal from `run_queue_turn` to its job: a consumer took it."""

    agent: str
    thread_id: str
    started_at: datetime


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


# The toolkit channel: an agent exposed to the room as a callable tool (see channels/toolkit.py).


class ToolkitTool(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]


class ToolkitInfo(BaseModel):
    """What a toolkit is: registered by the agent that serves it, kept in the toolkit's registry workflow."""

    room: str
    name: str
    description: str
    agent: AgentRef
    tools: list[ToolkitTool]
    registered_at: datetime | None = None


class ToolkitInstance(BaseModel):
    """One agent process serving a toolkit; `identity` is its Temporal worker identity (as pollers report it)."""

    identity: str
    started_at: datetime


class ToolkitState(BaseModel):
    """The registry workflow's whole state (and its memo, so reads need no worker)."""

    room: str
    name: str
    info: ToolkitInfo | None = None
    instances: list[ToolkitInstance] = Field(default_factory=list)


class ToolkitRegistration(BaseModel):
    info: ToolkitInfo
    instance: ToolkitInstance


class ToolkitListing(BaseModel):
    """A toolkit as `room agent list-toolkits` shows it."""

    name: str
    room: str
    description: str
    agent: str
    thread_dir: str
    task_queue: str
    online: bool
    registered_at: datetime | None = None
    tools: list[ToolkitTool]


class ToolResult(BaseModel):
    """What invoking a toolkit's tool returns: the serving agent's reply and where to continue the conversation."""

    text: str
    thread_id: str
    turn_id: str


# The mail channel: inbound SMTP → a mail job on the mailbox's queue → a turn → a reply through an SMTP relay.

DEFAULT_MAX_MAIL_BYTES = 25 * 1024 * 1024


class MailSettings(BaseModel):
    """`--smtp-host`, `--smtp-port` (0: no inbound server in this process), `--smtp-relay`, `--mail-allow`,
    `--mail-require-auth`, `--max-mail-size`, `--mail-failure-notice`."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(2525, ge=0, le=65535)
    smtp_relay: str | None = Field(None, description="host:port of the relay that sends replies")
    allow: list[str] = Field(default_factory=list, description="addresses or @domains that may start work")
    require_auth: str | None = Field(
        None, description="authserv-id of the receiving server whose Authentication-Results must say pass")
    max_size: int = Field(DEFAULT_MAX_MAIL_BYTES, ge=1024)
    failure_notice: bool = True


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


# The chat channel over HTTP (`--channel chat` in `process join`): API, SSE, web page, OpenAI-compatible endpoint.

DEFAULT_HTTP_PORT = 8780
DEFAULT_HEALTH_HOST = "127.0.0.1"
CONTAINER_HEALTH_HOST = "0.0.0.0"
"""In a container the kubelet's and Docker's probes come from outside the container's loopback."""


class HttpSettings(BaseModel):
    """`--http-host`, `--http-port`, `--http-token`, `--temporal-ui-url`."""

    serve: bool = Field(True, description="False: the chat channel runs without its HTTP server (process run)")
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535,
                             description="None: the default port, left to another process when it is taken; 0: any")
    token: str | None = Field(None, repr=False, description="bearer token every API request must carry")
    temporal_ui_url: str | None = Field(None, description="base URL of the Temporal UI, for links to threads")


# Web and MCP tools (activities/web.py, activities/mcp_tools.py).


class WebSettings(BaseModel):
    """`--web-fetch`, `--web-fetch-allow`, `--web-search`, `--web-search-provider`."""

    fetch: bool = False
    fetch_allow: list[str] = Field(default_factory=list, description="hosts, host:port or CIDRs exempt from the guard")
    fetch_max_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    fetch_timeout: float = Field(30.0, gt=0, le=600)
    search: bool = False
    search_provider: str | None = Field(None, description="searxng | brave | tavily; None: the first configured")


class McpSettings(BaseModel):
    """`--mcp URL[#options]` (repeatable), `--mcp-optional`, `--mcp-serve-host`, `--mcp-serve-port`,
    `--mcp-serve-token`."""

    servers: list[str] = Field(default_factory=list)
    optional: bool = False
    serve_host: str = "127.0.0.1"
    serve_port: int | None = Field(None, ge=0, le=65535, description="None: no MCP server; 0: any free port")
    serve_token: str | None = Field(None, description="bearer token MCP clients must send (a secret: never in a spec)")


AgentSpec.model_rebuild()
