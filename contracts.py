"""Every activity a workflow runs, as one typed contract: its wire name, argument and result types, and how it is
scheduled. Workflows call `CALL_MODEL.start(...)`; the implementing method is decorated `@CALL_MODEL.defn`, so a
reader (or a search for the name) goes from a workflow to the code it runs, and the two cannot disagree on a name,
a type or a timeout. Wire names are what running threads replay against: never change one.

This module sits between the domain models and both workflows and activities: neither of those imports the other.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Generic, TypeVar

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from threadline.models.jobs import (
    MailJobInput,
    MailReplyRequest,
    MailTurnPlan,
    QueueReplyRequest,
    QueueTurnRequest,
    QueueTurnResult,
)
from threadline.models.limits import ErrorType
from threadline.models.thread import (
    CompactionInput,
    CompactionResult,
    ModelCallInput,
    ModelStep,
    OutcomeRecord,
    StoredTranscript,
    StoredTranscriptRequest,
    ToolCall,
    ToolCallInput,
    ToolOutcome,
)

Arg = TypeVar("Arg")
Result = TypeVar("Result")
Method = TypeVar("Method", bound=Callable[..., Any])

HEARTBEAT_TIMEOUT = timedelta(seconds=3)
"""Every long activity heartbeats (activities/heartbeat.py paces itself from this): a dead worker is noticed here,
so this bounds how long a kill -9 delays the turns it had in flight (bench/recovery.py). Heartbeats go out every
second, so a loop stalled for up to 2 s still costs no attempt."""


@dataclasses.dataclass(frozen=True)
class ActivityContract(Generic[Arg, Result]):
    name: str
    arg_type: type[Arg]
    result_type: type[Result]
    start_to_close_timeout: timedelta
    retry_policy: RetryPolicy
    heartbeat_timeout: timedelta | None = None
    schedule_to_close_timeout: timedelta | None = None

    def defn(self, method: Method) -> Method:
        """Registers `method` as this activity, after checking that it takes `arg_type` and returns `result_type`."""
        hints = typing.get_type_hints(method)
        hints.pop("self", None)
        returns = hints.pop("return", None)
        if list(hints.values()) != [self.arg_type] or returns is not self.result_type:
            raise TypeError(f"{method.__qualname__} does not match the {self.name!r} contract: it takes "
                            f"{list(hints.values())} and returns {returns}; the contract says "
                            f"{self.arg_type.__name__} -> {self.result_type.__name__}")
        return activity.defn(name=self.name)(method)

    def options(self, **overrides: Any) -> dict[str, Any]:
        scheduled = {
            "start_to_close_timeout": self.start_to_close_timeout, "retry_policy": self.retry_policy,
            "heartbeat_timeout": self.heartbeat_timeout, "schedule_to_close_timeout": self.schedule_to_close_timeout,
        }
        return {key: value for key, value in (scheduled | overrides).items() if value is not None}

    def start(self, arg: Arg, *, summary: str, local: bool = False,
              **overrides: Any) -> workflow.ActivityHandle[Result]:
        """`local`: run by the worker inside the workflow task that asks for it (no heartbeats, no task round trip)."""
        typed = {} if self.result_type is type(None) else {"result_type": self.result_type}
        options = self.options(**overrides)
        if local:
            options.pop("heartbeat_timeout", None)
            return workflow.start_local_activity(self.name, arg, summary=summary, **typed, **options)
        return workflow.start_activity(self.name, arg, summary=summary, **typed, **options)

    async def execute(self, arg: Arg, *, summary: str, **overrides: Any) -> Result:
        return await self.start(arg, summary=summary, **overrides)


CALL_MODEL = ActivityContract(
    "call_model", ModelCallInput, ModelStep,
    start_to_close_timeout=timedelta(minutes=5), heartbeat_timeout=HEARTBEAT_TIMEOUT,
    # Eight attempts, waits of at most 60 s between them (Retry-After is clamped): a provider that keeps refusing
    # ends the turn with its error within minutes, without a schedule-to-close timer per call for the server to keep.
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                             maximum_attempts=8),
)
COMPACT_THREAD = ActivityContract(
    "compact_thread", CompactionInput, CompactionResult,
    # A long thread's first compaction may take several model calls (the summary is built chunk by chunk).
    start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=HEARTBEAT_TIMEOUT,
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                             maximum_attempts=8),
)
RUN_TOOL = ActivityContract(
    "run_tool", ToolCallInput, ToolOutcome,
    # Per call, from the tool's own timeout and attempts: see run_tool_options.
    start_to_close_timeout=timedelta(minutes=5), heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=RetryPolicy(),
)
RECORD_OUTCOME = ActivityContract(
    "record_outcome", OutcomeRecord, type(None),
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)),
)
STORED_TRANSCRIPT = ActivityContract(
    "stored_transcript", StoredTranscriptRequest, StoredTranscript,
    # A local activity in the first workflow task of a thread's run that starts with no transcript: one indexed read.
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)),
)
RUN_QUEUE_TURN = ActivityContract(
    "run_queue_turn", QueueTurnRequest, QueueTurnResult,
    # An upper bound of one attempt; a dead consumer is noticed at the heartbeat timeout instead.
    start_to_close_timeout=timedelta(hours=12), heartbeat_timeout=HEARTBEAT_TIMEOUT,
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                             non_retryable_error_types=[ErrorType.JOB_PATH_ERROR, ErrorType.DUPLICATE_TURN]),
)
SEND_QUEUE_REPLY = ActivityContract(
    "send_queue_reply", QueueReplyRequest, str,
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)),
)
PREPARE_MAIL_TURN = ActivityContract(
    "prepare_mail_turn", MailJobInput, MailTurnPlan,
    start_to_close_timeout=timedelta(minutes=2),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                             non_retryable_error_types=[ErrorType.MAIL_UNREADABLE]),
)
SEND_MAIL_REPLY = ActivityContract(
    "send_mail_reply", MailReplyRequest, str,
    start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=HEARTBEAT_TIMEOUT,
    # A relay that stays down this long: the reply is given up and the error kept in the job.
    schedule_to_close_timeout=timedelta(days=2),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5),
                             non_retryable_error_types=[ErrorType.MAIL_REJECTED, ErrorType.MAIL_CONFIG_ERROR]),
)
ALL = (CALL_MODEL, COMPACT_THREAD, RUN_TOOL, RECORD_OUTCOME, STORED_TRANSCRIPT, RUN_QUEUE_TURN, SEND_QUEUE_REPLY,
       PREPARE_MAIL_TURN, SEND_MAIL_REPLY)

LIST_AS_RUNNING = "list_as_running"
"""The signal a model call sends its thread (argument: the turn id) when the call is still in flight at its input's
`list_running_at`: the thread then lists itself `running` in the Temporal UI."""

TOOL_TIMEOUT_GRACE_SECONDS = 10.0


def run_tool_options(call: ToolCall) -> dict[str, Any]:
    """How `run_tool` is scheduled for one call, from the thread or from a call's child workflow."""
    return RUN_TOOL.options(
        # The activity stops the tool at its timeout and answers; Temporal's bound, a little later, is for a
        # worker that cannot answer at all.
        start_to_close_timeout=timedelta(seconds=call.timeout_seconds + TOOL_TIMEOUT_GRACE_SECONDS),
        retry_policy=RetryPolicy(maximum_attempts=call.max_attempts + 1),
    )


def tool_summary(call: ToolCall) -> str:
    text = f"{call.name} {call.arguments}" if call.arguments not in ("", "{}") else call.name
    return "tool " + (text if len(text) <= 80 else text[:79] + "…")
