"""A thread and its turns: what channels deliver, what the thread workflow keeps, what its activities exchange.

Field names are a durable contract: they end up in Temporal histories, so fields are only ever added (with defaults).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter
from threadline.models.limits import AgentName, RoomName, text_limit

ThreadStatus = Literal["idle", "running", "failed", "waiting"]
"""waiting: a turn waits for a person to approve a tool call."""
TurnStatus = Literal["completed", "failed", "cancelled"]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    model_calls: int = 0
    cost_usd: float = Field(0.0, description="of the priced calls, at their prices when they ran")

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            model_calls=self.model_calls + other.model_calls,
            cost_usd=round(self.cost_usd + other.cost_usd, 9),
        )


class UsageRow(BaseModel):
    """One model call's usage as the thread store has it (the cost ledger's input)."""

    thread_id: str
    agent: str
    channel: str
    at: float
    model: str
    usage: Usage


class AgentRef(BaseModel):
    """Where an agent's threads live in Temporal: enough for any process to address them."""

    room: RoomName
    agent_name: AgentName
    thread_dir: str = ""

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


class PriorMessage(BaseModel):
    """A message of a conversation the thread has not seen (a client's history): recorded before the turn."""

    role: Literal["user", "assistant"]
    text: str = ""


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
    prior: list[PriorMessage] = Field(
        default_factory=list, description="earlier messages of the conversation, recorded in the thread first")


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
    type: Literal["user", "assistant", "tool_result", "status", "error", "summary", "approval"]
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
    local: bool = Field(False, description="run as a local activity: an instant, in-process built-in")
    approval_timeout_seconds: float | None = Field(
        None, description="set: a person approves the call first, within this long (or it is denied)")


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
    resume: TurnResume | None = Field(None, description="the turn that waited for approvals when the run rolled over")
    decisions: list[ApprovalOutcome] = Field(default_factory=list, description="recent decisions, kept across runs")
    patches: list[str] = Field(
        default_factory=list, description="workflow changes (patch ids) in force from this run's first event: the code "
        "that started the run had them, so they apply without a patch marker")


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
    after_compaction: bool = Field(False, description="the thread was just compacted for this step: do not ask again")
    list_running_at: float | None = Field(
        None, description="epoch seconds: if the call is still in flight then, it asks the thread to list itself "
                          "`running` (a timer per turn would cost every turn, however short)")


class ModelStep(BaseModel):
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    model: str
    max_steps: int = Field(description="from the worker's configuration, so a restarted agent's setting applies")
    compaction_needed: str | None = Field(
        None, description="the model was not called: the prompt is over the compaction threshold (why, in words); "
                          "the workflow compacts the thread and calls again")
    prompt_tokens: int = Field(0, description="the prompt's estimated tokens, calibrated by the provider's counts")


class CompactionInput(BaseModel):
    """Summarise the thread's items before `before_seq` (those not yet summarised, minus the newest ones kept
    verbatim) into one `summary` item at `seq`."""

    thread_id: str
    turn_id: str
    seq: int
    before_seq: int
    model: str | None = None
    reason: str = ""
    prompt_tokens: int = Field(0, description="the estimate that asked for this compaction")


class StoredTranscriptRequest(BaseModel):
    thread_id: str


class StoredTranscript(BaseModel):
    """Where a thread's transcript in the store ends: a thread whose workflow starts anew (terminated by ops, a new
    Temporal server or cluster) goes on after it instead of writing over it."""

    next_seq: int = 1


class CompactionResult(BaseModel):
    first_seq: int = 0
    last_seq: int = 0
    """The range of items the summary covers; 0, 0 when there was nothing to summarise."""
    tokens_before: int = 0
    tokens_after: int = 0
    usage: Usage = Field(default_factory=Usage)


ApprovalChannel = Literal["web", "api", "cli", "terminal", "mail", "timeout"]


class ApprovalRequest(BaseModel):
    """A tool call that waits for a person: bound to its thread, its call and a digest of its arguments."""

    approval_id: str = Field(description="`<thread id>:<seq of the call's result>`: names its thread")
    thread_id: str
    turn_id: str
    call_id: str
    tool: str
    arguments: str
    digest: str
    requested_at: float
    expires_at: float


class ApprovalDecision(BaseModel):
    approval_id: str = Field(min_length=3, max_length=1000)
    approve: bool
    by: str = Field(min_length=1, max_length=200, description="who decides")
    via: ApprovalChannel
    reason: str = Field("", max_length=2000)
    digest: str | None = Field(None, description="when given, must be the request's: the arguments it approves")


class ApprovalOutcome(BaseModel):
    approval_id: str
    approved: bool
    by: str
    via: ApprovalChannel
    at: float
    reason: str = ""
    digest: str = ""
    already_decided: bool = Field(False, description="an earlier decision stands; this one changed nothing")

    def describe(self) -> str:
        """`approved by ann (cli) at 2026-12-02 03:10:00 UTC: reason`."""
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        verdict = "approved" if self.approved else "denied"
        return f"{verdict} by {self.by} ({self.via}) at {when}" + (f": {self.reason}" if self.reason else "")


class TurnResume(BaseModel):
    """A turn that waited for people's decisions when its thread rolled over (continue-as-new): the new run goes on
    from that step's tool calls. The calls not waiting had settled; their results are in the thread store."""

    turn: Turn
    started_at: float
    usage: Usage
    model_calls: int
    first_seq: int
    calls: list[ToolCall]
    waiting: list[ApprovalRequest]
    steers: list[Steer] = Field(default_factory=list)


def thread_of_approval(approval_id: str) -> str:
    """The thread an approval id belongs to; '' for an id that names none."""
    thread_id, sep, seq = approval_id.strip().rpartition(":")
    return thread_id if sep and seq.isdigit() and thread_id.count("/") >= 2 else ""


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
ThreadState.model_rebuild()


_ITEM_LIST = TypeAdapter(list[ThreadItem])


class ParsedItems:
    """Items parsed before, by their stored JSON text. A thread's history window (up to 400 items) is read again on
    every model call, and all but the newest few items are the same text as last time: parsing them again was the
    largest share of the worker's CPU per turn on a long thread. Keyed by the text itself, so an item rewritten in
    the store, by this process or another, is parsed anew. Two generations of `size` entries bound the memory: the
    older is dropped when the newer fills up, and an entry found there moves to the newer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._new: dict[str, ThreadItem] = {}
        self._old: dict[str, ThreadItem] = {}

    def parse(self, bodies: list[str]) -> list[ThreadItem]:
        found: list[ThreadItem | None] = [self._new.get(body) or self._old.get(body) for body in bodies]
        missing = [body for body, item in zip(bodies, found) if item is None]
        parsed = iter(_ITEM_LIST.validate_json("[" + ",".join(missing) + "]") if missing else [])
        items = [item if item is not None else next(parsed) for item in found]
        for body, item in zip(bodies, items):
            if body not in self._new:
                if len(self._new) >= self.size:
                    self._old, self._new = self._new, {}
                self._new[body] = item
        return items


_PARSED_ITEMS = ParsedItems(size=2048)


def parse_items(bodies: list[str]) -> list[ThreadItem]:
    """Stored item bodies (JSON) → items; the ones not parsed recently as one JSON array, in one pass of
    pydantic-core. The items returned may be shared with other callers: change one only through `model_copy`."""
    return _PARSED_ITEMS.parse(bodies)
