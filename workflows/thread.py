"""`ThreadWorkflow`: one long-running workflow per thread; its workflow id is the thread id.

Turns are admitted by signal (fire and forget) or update (the caller waits for the reply), run one at a time in
FIFO order, and each turn is a loop of model calls and tool calls, all activities. The transcript never enters the
workflow: activities persist items in the thread store and the workflow only hands out sequence numbers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from threadline import telemetry
    from threadline.contracts import (
        CALL_MODEL,
        COMPACT_THREAD,
        LIST_AS_RUNNING,
        RECORD_OUTCOME,
        RUN_TOOL,
        STORED_TRANSCRIPT,
        ActivityContract,
        run_tool_options,
        tool_summary,
    )
    from threadline.models.limits import ErrorType
    from threadline.models.thread import (
        ApprovalDecision,
        ApprovalOutcome,
        ApprovalRequest,
        CompactionInput,
        CompactionResult,
        Interrupt,
        ModelCallInput,
        ModelStep,
        OutcomeRecord,
        Reply,
        Steer,
        StoredTranscriptRequest,
        ThreadItem,
        ThreadSnapshot,
        ThreadStart,
        ThreadState,
        ThreadStatus,
        ToolCall,
        ToolCallInput,
        ToolOutcome,
        Turn,
        TurnResume,
        Usage,
    )
    from threadline.workflows.approvals import ThreadApprovals, approval_id
    from threadline.workflows.failures import failure_message, tool_failure_result
    from threadline.workflows.search_attributes import STATUS_ATTRIBUTE
    from threadline.workflows.tool_call import ToolCallWorkflow


UPDATES_PER_RUN = 1500
"""Temporal refuses more than 2,000 updates per run; past this budget callers fall back to signal-and-poll."""
RECENT_REPLIES = 16
REPLY_RETENTION_SECONDS = 300.0
"""Replies younger than this are kept beyond RECENT_REPLIES: callers that fell back to signal-and-poll find theirs
even when many turns finish between two polls."""
MAX_KEPT_REPLIES = 200
MAX_QUEUED_BYTES = 1024 * 1024
"""Text of the turns waiting in one thread. Continue-as-new carries them in one payload (Temporal refuses past
2 MiB), so a turn that would pass this while others wait is answered `failed` at once, saying why."""
CARRIED_REPLIES_BYTES = 384 * 1024
CARRIED_CUT_REPLY_BYTES = 512
"""Continue-as-new carries the newest replies whole up to CARRIED_REPLIES_BYTES in all, and older ones cut to
CARRIED_CUT_REPLY_BYTES (the whole text is in the thread store), so with a full queue and 200 kept replies the
rollover payload stays near 1.5 MiB, under Temporal's 2 MiB."""
BOUNDED_STATE_PATCH = "bounded-queue-and-carried-replies"
SEEN_TURN_IDS = 1000
SNAPSHOT_REPLIES = 5
SNAPSHOT_TEXT = 500
CUT_AT_ROLLOVER = "\n[cut when the thread rolled over to a new run: the whole reply is in the thread store]"
REQUEUE_STEERS_PATCH = "requeue-unanswered-steers"
TOOL_FAILURE_AS_RESULT_PATCH = "tool-failure-as-result"


ROLL_OVER_WAITING_PATCH = "roll-over-while-waiting-for-approval"
LIST_RUNNING_LATE_PATCH = "list-running-after-a-second"
LOCAL_TOOLS_PATCH = "local-activity-for-instant-tools"
RECORD_REFUSALS_PATCH = "record-refused-turns"
LIST_ON_REQUEST_PATCH = "list-running-on-the-model-call-request"
CONTINUE_STORED_PATCH = "continue-the-stored-transcript"
REFUSE_AFTER_OPENING_PATCH = "number-refusals-after-the-stored-transcript"
LISTED_RUNNING_AFTER = timedelta(seconds=1)
"""A thread at rest is listed `running` (its status search attribute) only once it has been busy this long: each
upsert is a visibility write on the server, and two per turn were a sixth of its work for a sub-second turn. A model
call in flight at that moment asks for the listing (the `list_as_running` signal); other steps start a timer. A
timer in every turn, started and cancelled, was a twentieth of the server's work for a sub-second turn."""
RESTING_STATUSES = ("idle", "failed")
THREAD_PATCHES = (BOUNDED_STATE_PATCH, REQUEUE_STEERS_PATCH, TOOL_FAILURE_AS_RESULT_PATCH, ROLL_OVER_WAITING_PATCH,
                  LIST_RUNNING_LATE_PATCH, LOCAL_TOOLS_PATCH, RECORD_REFUSALS_PATCH, LIST_ON_REQUEST_PATCH,
                  CONTINUE_STORED_PATCH, REFUSE_AFTER_OPENING_PATCH)
"""Every change of this code that `workflow.patched` guards. A run started by this code (a new thread, a rollover)
lists them in its input, `ThreadState.patches`: it needs no patch marker, and no `TemporalChangeVersion` upsert (a
visibility write on the server) in each new run."""


@dataclass
class CallState:
    """A tool call of the running step: `waiting` for a person's decision on this request, or `settled`."""

    waiting: ApprovalRequest | None = None
    settled: bool = False


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text.encode()) <= limit:
        return text
    return text.encode()[:limit].decode(errors="ignore") + CUT_AT_ROLLOVER


class TurnInterrupted(Exception):
    pass


class TurnFailed(Exception):
    pass


@workflow.defn(name="ThreadWorkflow")
class ThreadWorkflow:
    @workflow.init
    def __init__(self, start: ThreadStart) -> None:
        self.state = start.state
        self.running: Turn | None = None
        self.steers: list[Steer] = []
        self.interrupted_turn_id: str | None = None
        self.inflight: dict[asyncio.Future[Any], None] = {}
        """Activities and child calls of the running turn, in the order they started: an interrupt cancels them in
        that order, the same on every replay (a set's order would follow memory addresses)."""
        self.run_updates = 0
        self.reply_times: dict[str, float] = {}
        self.status: ThreadStatus = "idle"
        self.listing_due: datetime | None = None
        """When the thread, busy but listed at rest, is to be listed `running`; None once it is, or at rest."""
        self.listing_as_running: asyncio.Task[None] | None = None
        self.recording_refusals: dict[asyncio.Task[None], None] = {}
        self.opened = self.state.next_seq != 1
        """The run knows where the thread's transcript ends, so it may number items."""
        resume = start.state.resume
        self.approvals = ThreadApprovals(start.state.decisions, resume.waiting if resume else [])
        self.calls: dict[int, CallState] = {}
        """The running step's tool calls, by seq: the run may roll over when every one not done waits for a person."""
        if resume is not None:
            # Known before any handler runs: a redelivered turn is not queued again, a decision finds its request.
            self.running = resume.turn
            self.status = "waiting"  # the search attribute came with the new run
        self.turn_started = workflow.now()

    @workflow.run
    async def run(self, start: ThreadStart) -> None:
        if self.state.next_seq == 1 and self._patched(CONTINUE_STORED_PATCH):
            # A run that starts a thread anew (ops terminated its workflow; a new Temporal server or cluster) may find
            # its transcript in the store: it goes on after it. A new thread pays one local activity, no round trip.
            stored = await STORED_TRANSCRIPT.execute(StoredTranscriptRequest(thread_id=self.state.thread_id),
                                                     summary="where the stored transcript ends", local=True)
            self.state.next_seq = max(self.state.next_seq, stored.next_seq)
        self.opened = True
        if self.state.resume is not None:
            resume, self.state.resume = self.state.resume, None
            self._remember(await self._run_turn(resume.turn, resume))
        while True:
            await workflow.wait_condition(lambda: bool(self.state.queue) or self._run_is_full())
            if self._run_is_full():
                # Update handlers of queued turns wait for their replies, so roll over only once none is waiting.
                await workflow.wait_condition(lambda: self._may_roll_over() or bool(self.state.queue))
                if self._may_roll_over():
                    workflow.continue_as_new(ThreadStart(state=self._carried_state()))
            turn = self.state.queue.pop(0)
            reply = await self._run_turn(turn)
            self._remember(reply)

    def _patched(self, patch_id: str) -> bool:
        # A run without the patch in its input was started by older code (or by a channel on older code): the marker
        # tells whether its history took the patched path.
        return patch_id in self.state.patches or workflow.patched(patch_id)

    def _run_is_full(self) -> bool:
        return workflow.info().is_continue_as_new_suggested() or self.run_updates >= UPDATES_PER_RUN

    def _may_roll_over(self) -> bool:
        return workflow.all_handlers_finished() and not self.recording_refusals

    def _may_roll_over_waiting(self) -> bool:
        """A turn that waits for people (hours, maybe) lets the run roll over, once nothing of it runs: every call
        of the step has settled or waits for an undecided approval."""
        waiting = [seq for seq, state in self.calls.items() if state.waiting]
        return bool(waiting) and self._run_is_full() \
            and all(state.waiting or state.settled for state in self.calls.values()) \
            and all(self.approvals.undecided(self.calls[seq].waiting.approval_id) for seq in waiting) \
            and self._patched(ROLL_OVER_WAITING_PATCH)

    # Admission: one path, two ways in.

    @workflow.signal(name="enqueue_turn")
    def enqueue_turn(self, turn: Turn) -> None:
        self._admit(turn)

    # A run that rolls over while its turn waits for approvals leaves this handler unfinished: its caller is told
    # (AcceptedUpdateCompletedWorkflow) and waits for the reply by query instead.
    @workflow.update(name="submit_turn", unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON)
    async def submit_turn(self, turn: Turn) -> Reply:
        self.run_updates += 1
        self._admit(turn)
        await workflow.wait_condition(lambda: self._reply_for(turn.turn_id) is not None or self._forgotten(turn.turn_id))
        reply = self._reply_for(turn.turn_id)
        if reply is None:
            raise ApplicationError(
                f"turn {turn.turn_id} already ran in this thread and its reply is no longer kept",
                type=ErrorType.DUPLICATE_TURN,
                non_retryable=True,
            )
        return reply

    @submit_turn.validator
    def _validate_submit_turn(self, turn: Turn) -> None:
        # Once a rollover is due every update handler delays it (the run waits for them all to finish), so new
        # turns go the signal path instead, and the rollover happens as soon as the running turn ends.
        if self._run_is_full():
            raise ApplicationError("thread is rolling over to a new run: deliver the turn by signal",
                                   type=ErrorType.THREAD_ROLLING_OVER, non_retryable=True)

    def _admit(self, turn: Turn) -> None:
        known = turn.turn_id in self.state.seen_turn_ids or any(t.turn_id == turn.turn_id for t in self.state.queue)
        if known or (self.running is not None and self.running.turn_id == turn.turn_id):
            return
        queued = sum(len(t.text.encode()) for t in self.state.queue)
        if self.state.queue and queued + len(turn.text.encode()) > MAX_QUEUED_BYTES \
                and self._patched(BOUNDED_STATE_PATCH):
            self._refuse(turn, f"the thread already has {len(self.state.queue)} turns waiting ({queued:,} bytes of "
                               f"text; the limit is {MAX_QUEUED_BYTES:,}): send it again once they have run, or put "
                               "large content in room storage")
            return
        self.state.queue.append(turn)
        if self.running is None:
            self._set_status("running")

    def _refuse(self, turn: Turn, reason: str) -> None:
        """Answers a turn that was not admitted: its callers get the reason as a failed reply at once, and readers of
        the thread (the chat feed, `process messages`) an error item with it, but not the turn's text, whose size is
        the reason."""
        self.state.recent_replies = [*self.state.recent_replies, Reply(
            thread_id=self.state.thread_id, turn_id=turn.turn_id, status="failed", error=reason,
        )][-MAX_KEPT_REPLIES:]
        self.reply_times[turn.turn_id] = workflow.now().timestamp()
        self.state.seen_turn_ids = [*self.state.seen_turn_ids, turn.turn_id][-SEEN_TURN_IDS:]
        if self._patched(RECORD_REFUSALS_PATCH):
            if self.opened or not self._patched(REFUSE_AFTER_OPENING_PATCH):
                recording = asyncio.create_task(self._record_items([self._refusal(turn, reason)], self.status))
            else:
                recording = asyncio.create_task(self._record_refusal_once_opened(turn, reason))
            self.recording_refusals[recording] = None
            recording.add_done_callback(self.recording_refusals.pop)

    async def _record_refusal_once_opened(self, turn: Turn, reason: str) -> None:
        """A turn refused before the run found where the stored transcript ends (turns that came with the first
        task of a thread whose workflow is gone) is numbered after that end, not over the transcript's first item."""
        await workflow.wait_condition(lambda: self.opened)
        await self._record_items([self._refusal(turn, reason)], self.status)

    def _refusal(self, turn: Turn, reason: str) -> ThreadItem:
        return self._item("error", turn, text=f"the turn was not run: {reason}")

    def _carried_state(self) -> ThreadState:
        if not self._patched(BOUNDED_STATE_PATCH):
            return self.state.model_copy(update={"patches": list(THREAD_PATCHES)})  # the next run starts on this code
        self.state.decisions = self.approvals.carried()
        carried: list[Reply] = []
        total = 0
        for reply in reversed(self.state.recent_replies):
            total += len(reply.text.encode())
            if total > CARRIED_REPLIES_BYTES:
                reply = reply.model_copy(update={
                    "text": _cut(reply.text, CARRIED_CUT_REPLY_BYTES), "error": _cut(reply.error, CARRIED_CUT_REPLY_BYTES),
                })
            carried.insert(0, reply)
        return self.state.model_copy(update={"recent_replies": carried, "patches": list(THREAD_PATCHES)})

    def _reply_for(self, turn_id: str) -> Reply | None:
        return next((r for r in self.state.recent_replies if r.turn_id == turn_id), None)

    def _forgotten(self, turn_id: str) -> bool:
        return turn_id in self.state.seen_turn_ids and self._reply_for(turn_id) is None

    def _remember(self, reply: Reply) -> None:
        now = workflow.now().timestamp()
        replies = [r for r in self.state.recent_replies if r.turn_id != reply.turn_id] + [reply]
        for kept in replies:  # replies carried over continue-as-new count from the new run's first turn
            self.reply_times.setdefault(kept.turn_id, now)
        self.reply_times[reply.turn_id] = now
        self.state.recent_replies = [
            r for n, r in enumerate(replies)
            if n >= len(replies) - RECENT_REPLIES or now - self.reply_times[r.turn_id] < REPLY_RETENTION_SECONDS
        ][-MAX_KEPT_REPLIES:]
        self.reply_times = {r.turn_id: self.reply_times[r.turn_id] for r in self.state.recent_replies}
        self.state.seen_turn_ids = [*self.state.seen_turn_ids, reply.turn_id][-SEEN_TURN_IDS:]
        self.state.turns_completed += 1

    # Double texting.

    @workflow.signal(name="steer")
    def steer(self, steer: Steer) -> None:
        if self.running is not None and steer.turn_id in (None, self.running.turn_id):
            self.steers.append(steer)
        else:
            self._admit(Turn(turn_id=str(workflow.uuid4()), text=steer.text, sender=steer.sender))

    @workflow.signal(name="interrupt")
    def interrupt(self, request: Interrupt) -> None:
        if self.running is None or request.turn_id not in (None, self.running.turn_id):
            return
        self.interrupted_turn_id = self.running.turn_id
        for task in list(self.inflight):
            task.cancel()

    @workflow.signal(name=LIST_AS_RUNNING)
    def list_as_running(self, turn_id: str) -> None:
        """A model call of the running turn was still in flight when the listing fell due."""
        if self.listing_due is not None and self.running is not None and self.running.turn_id == turn_id:
            self._list_running_now()

    # Approvals.

    @workflow.update(name="decide_approval")
    def decide_approval(self, decision: ApprovalDecision) -> ApprovalOutcome:
        self.run_updates += 1
        return self.approvals.decide(decision, workflow.now().timestamp())

    @decide_approval.validator
    def _validate_decide_approval(self, decision: ApprovalDecision) -> None:
        self.approvals.validate(decision)

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[ApprovalRequest]:
        return list(self.approvals.pending.values())

    # Queries.

    @workflow.query(name="snapshot")
    def snapshot(self) -> ThreadSnapshot:
        return ThreadSnapshot(
            thread_id=self.state.thread_id,
            status=self.status,
            running_turn_id=self.running.turn_id if self.running else None,
            queued_turn_ids=[t.turn_id for t in self.state.queue],
            next_seq=self.state.next_seq,
            turns_completed=self.state.turns_completed,
            usage=self.state.usage,
            last_error=self.state.last_error,
            run_updates=self.run_updates,
            recent_replies=[
                r.model_copy(update={"text": r.text[:SNAPSHOT_TEXT] + ("…" if len(r.text) > SNAPSHOT_TEXT else "")})
                for r in self.state.recent_replies[-SNAPSHOT_REPLIES:]
            ],
        )

    @workflow.query(name="turn_reply")
    def turn_reply(self, turn_id: str) -> Reply | None:
        return self._reply_for(turn_id)

    @workflow.query(name="turn_forgotten")
    def turn_forgotten(self, turn_id: str) -> bool:
        """True when the turn ran but its reply is no longer kept (no use waiting for it)."""
        return self._forgotten(turn_id)

    # The turn loop.

    async def _run_turn(self, turn: Turn, resume: TurnResume | None = None) -> Reply:
        """One turn, as one span (with OpenTelemetry configured): its model and tool calls are its children."""
        rollover: workflow.ContinueAsNewError | None = None
        with telemetry.workflow_span("turn", {
            "threadline.thread_id": self.state.thread_id, "threadline.turn_id": turn.turn_id,
            "threadline.channel": turn.channel, "threadline.resumed": resume is not None,
        }) as span:
            try:
                reply = await self._turn(turn, resume)
            except workflow.ContinueAsNewError as e:
                # A waiting turn rolls the run over and goes on in the next run's `turn` span: raised past this one
                # so that it does not end as a failure (any other exception does).
                span.set_attribute("threadline.continued_as_new", True)
                rollover = e
            else:
                span.set_attributes({"threadline.status": reply.status, "threadline.steps": reply.steps})
        if rollover is not None:
            raise rollover
        return reply

    async def _turn(self, turn: Turn, resume: TurnResume | None = None) -> Reply:
        self.running = turn
        pending: list[ThreadItem] = []
        usage = Usage()
        model_calls = 0
        if resume is None:
            self.interrupted_turn_id = None
            self.turn_started = workflow.now()
            self._set_status("running")
            pending = [self._item(m.role, turn, text=m.text, sender=turn.sender if m.role == "user" else "",
                                  data={"imported": True}) for m in turn.prior]
            pending.append(self._item("user", turn, text=turn.text, sender=turn.sender, data={
                "channel": turn.channel, "attachments": turn.attachments, "metadata": turn.metadata,
            }))
        else:
            self.turn_started = datetime.fromtimestamp(resume.started_at, timezone.utc)
            usage, model_calls = resume.usage, resume.model_calls
            self.steers = [*resume.steers, *self.steers]
        compacted = False
        unanswered: list[Steer] = []
        """Steers sent with the model call in flight: applied once it answers."""
        try:
            if resume is not None:
                self._raise_if_interrupted(turn)  # interrupted as the new run began
                resumed = {r.approval_id: r for r in resume.waiting}
                await self._tool_step(turn, resume.calls, resume.first_seq, usage, model_calls, resumed)
            while True:
                pending += [self._item("user", turn, text=s.text, sender=s.sender, data={"steer": True}) for s in self.steers]
                unanswered, self.steers = self.steers, []
                self._raise_if_interrupted(turn)
                answer_seq = self.state.next_seq
                self.state.next_seq += 1
                step: ModelStep = await self._activity(
                    CALL_MODEL,
                    ModelCallInput(
                        thread_id=self.state.thread_id, turn_id=turn.turn_id, answer_seq=answer_seq,
                        new_items=pending, model=turn.model, instructions=turn.instructions, step=model_calls,
                        after_compaction=compacted, list_running_at=self._listing_request(),
                    ),
                    summary=f"model {turn.model or 'default'}, step {model_calls + 1}",
                )
                pending, unanswered = [], []
                if step.compaction_needed is not None:
                    usage += await self._compact(turn, answer_seq, step)
                    compacted = True
                    continue
                compacted = False
                usage += step.usage
                model_calls += 1
                self._raise_if_interrupted(turn)  # the answer came in just as the interrupt did: the interrupt wins
                if not step.tool_calls:
                    if self.steers:
                        continue
                    return self._finish(turn, Reply(
                        thread_id=self.state.thread_id, turn_id=turn.turn_id, status="completed", text=step.text,
                        usage=usage, steps=model_calls,
                    ))
                if model_calls >= step.max_steps:
                    raise TurnFailed(
                        f"the turn reached max_steps ({step.max_steps} model calls) without a final answer; "
                        "raise --max-steps or simplify the request"
                    )
                first = self.state.next_seq
                self.state.next_seq += len(step.tool_calls)
                await self._tool_step(turn, step.tool_calls, first, usage, model_calls)
        except (TurnInterrupted, asyncio.CancelledError, ActivityError, ChildWorkflowError, TurnFailed) as e:
            interrupted = self.interrupted_turn_id == turn.turn_id
            if isinstance(e, asyncio.CancelledError) and not interrupted:
                raise
            if interrupted:
                reply = Reply(thread_id=self.state.thread_id, turn_id=turn.turn_id, status="cancelled",
                              error="turn cancelled", usage=usage, steps=model_calls)
                final = self._item("status", turn, text="turn cancelled")
            else:
                message = failure_message(e)
                reply = Reply(thread_id=self.state.thread_id, turn_id=turn.turn_id, status="failed",
                              error=message, usage=usage, steps=model_calls)
                final = self._item("error", turn, text=message)
                self.state.last_error = message
            await self._record_outcome(turn, [*pending, final], "idle" if interrupted else "failed")
            if self._patched(REQUEUE_STEERS_PATCH):
                self._requeue_steers(turn, [*unanswered, *self.steers])
            return self._finish(turn, reply)

    async def _tool_step(self, turn: Turn, calls: list[ToolCall], first: int, usage: Usage, model_calls: int,
                         resumed: dict[str, ApprovalRequest] | None = None) -> None:
        """Runs one step's tool calls (of a resumed turn: the ones that were waiting) until all have settled, so no
        tool writes into a turn that is over. Rolls the run over instead when it is full and they only wait."""
        requests = [ToolCallInput(thread_id=self.state.thread_id, turn_id=turn.turn_id, seq=first + n, call=call)
                    for n, call in enumerate(calls)]
        self._list_by_timer()
        self.calls = {r.seq: CallState() for r in requests}
        running = []
        for request in requests:
            if resumed is not None and approval_id(request) not in resumed:
                self.calls[request.seq].settled = True  # in the run before: its result is in the store
                continue
            waiting = resumed.get(approval_id(request)) if resumed is not None else None
            running.append(self._tool_call(request, waiting))
        gathered = asyncio.gather(*running, return_exceptions=True)
        await workflow.wait_condition(lambda: gathered.done() or self._may_roll_over_waiting())
        if not gathered.done():
            workflow.continue_as_new(ThreadStart(state=self._carried_state().model_copy(update={
                "resume": TurnResume(
                    turn=turn, started_at=self.turn_started.timestamp(), usage=usage, model_calls=model_calls,
                    first_seq=first, calls=calls, steers=self.steers,
                    waiting=[s.waiting for s in self.calls.values() if s.waiting is not None],
                )})))
        self.calls = {}
        failure = next((o for o in gathered.result() if isinstance(o, BaseException)), None)
        if failure is not None:
            raise failure

    async def _compact(self, turn: Turn, before_seq: int, step: ModelStep) -> Usage:
        """The model activity found the prompt too long: the thread's oldest part becomes a summary item first."""
        self._list_by_timer()
        seq = self.state.next_seq
        self.state.next_seq += 1
        result: CompactionResult = await self._activity(
            COMPACT_THREAD,
            CompactionInput(thread_id=self.state.thread_id, turn_id=turn.turn_id, seq=seq, before_seq=before_seq,
                            model=turn.model, reason=step.compaction_needed or "",
                            prompt_tokens=step.prompt_tokens),
            summary=f"compact {step.compaction_needed}",
        )
        return result.usage

    def _requeue_steers(self, turn: Turn, steers: list[Steer]) -> None:
        """Steers that no model call answered before the turn ended early run next, ahead of the queue: an
        accepted steer is never dropped."""
        self.state.queue[0:0] = [
            Turn(turn_id=f"{turn.turn_id}-steer-{n}", channel=turn.channel, sender=s.sender, text=s.text,
                 model=turn.model, instructions=turn.instructions, metadata={"steer_of": turn.turn_id})
            for n, s in enumerate(steers, 1)
        ]
        self.steers = []

    def _finish(self, turn: Turn, reply: Reply) -> Reply:
        telemetry.turn_finished(turn.channel, reply.status, (workflow.now() - self.turn_started).total_seconds())
        self.state.usage += reply.usage
        self.running = None
        self.interrupted_turn_id = None
        self.steers = []
        status: ThreadStatus = "failed" if reply.status == "failed" else "idle"
        self._set_status("running" if self.state.queue else status)
        return reply

    def _raise_if_interrupted(self, turn: Turn) -> None:
        if self.interrupted_turn_id == turn.turn_id:
            raise TurnInterrupted()

    async def _activity(self, contract: ActivityContract[Any, Any], arg: Any, summary: str, **options: Any) -> Any:
        # An interrupt waits until the activity has really stopped: a model call or tool that went on running would
        # write its result into the thread after the turn was reported cancelled.
        return await self._interruptible(contract.start(
            arg, summary=summary, cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            **options,
        ))

    async def _tool_call(self, request: ToolCallInput, waiting: ApprovalRequest | None = None) -> ToolOutcome:
        outcome = await self._run_tool_call(request, waiting)
        self.calls[request.seq].settled = True
        return outcome

    async def _run_tool_call(self, request: ToolCallInput, waiting: ApprovalRequest | None) -> ToolOutcome:
        if request.call.approval_timeout_seconds is not None:
            outcome = await self._approval(request, waiting)
            if not outcome.approved:
                return await self._record_tool_result(
                    request, f"denied by {outcome.by}: {outcome.reason or 'no reason given'}")
        try:
            if not request.call.calls_agent:
                local = request.call.local and self._patched(LOCAL_TOOLS_PATCH)
                return await self._activity(RUN_TOOL, request, tool_summary(request.call), local=local,
                                            **run_tool_options(request.call))
            # Cancelling the child (an interrupt) waits until its activity has stopped, like `_activity`.
            return await self._interruptible(asyncio.ensure_future(workflow.execute_child_workflow(
                ToolCallWorkflow.run,
                request,
                id=f"{self.state.thread_id}/calls/{request.seq}",
                static_summary=tool_summary(request.call),
            )))
        except (ActivityError, ChildWorkflowError) as e:
            if self.interrupted_turn_id == request.turn_id or not self._patched(TOOL_FAILURE_AS_RESULT_PATCH):
                raise
            # Past its last attempt a tool that timed out or lost its worker answers the model with the error,
            # like a tool that raised: the turn goes on.
            return await self._record_tool_result(
                request, tool_failure_result(request.call.name, request.call.timeout_seconds, e))

    async def _record_tool_result(self, request: ToolCallInput, text: str) -> ToolOutcome:
        """A call that did not run, or did not answer: the model gets `text` as its failed result."""
        call = request.call
        await self._record_items([ThreadItem(
            seq=request.seq, turn_id=request.turn_id, type="tool_result", text=text, tool_call_id=call.call_id,
            tool_name=call.name, data={"ok": False}, created_at=workflow.now().timestamp(),
        )], "waiting" if self.approvals.pending else "running")
        return ToolOutcome(call_id=call.call_id, name=call.name, ok=False, summary=text[:200])

    async def _approval(self, call: ToolCallInput, waiting: ApprovalRequest | None) -> ApprovalOutcome:
        """Waits, in this workflow (no activity running, no worker slot held), for a person's decision on `call`;
        the request and the decision are items of the thread. `waiting`: the request a previous run recorded."""
        now = workflow.now().timestamp()
        remaining = None
        if waiting is None:
            request = self.approvals.request(call, now, call.call.approval_timeout_seconds or 0.0)
            self._set_status("waiting")
            await self._record_items([self._approval_item(request, {
                "state": "pending", "expires_at": request.expires_at,
            }, f"approval needed: {tool_summary(call.call)}")], "waiting")
        else:
            request, remaining = waiting, waiting.expires_at - now
        self.calls[call.seq].waiting = request
        outcome = await self._interruptible(asyncio.ensure_future(self.approvals.wait(request, remaining)))
        self.calls[call.seq].waiting = None
        verdict = "approved" if outcome.approved else "denied"
        telemetry.in_workflow(telemetry.APPROVALS, "approval decisions, by outcome and channel", outcome=verdict,
                              via=outcome.via)
        await self._record_items([self._approval_item(request, {
            "state": verdict, **outcome.model_dump(include={"by", "via", "at", "reason"}),
        }, f"{verdict} by {outcome.by} ({outcome.via})" + (f": {outcome.reason}" if outcome.reason else ""))],
            "waiting" if self.approvals.pending else "running")
        if not self.approvals.pending:
            self._set_status("running")
        return outcome

    def _approval_item(self, request: ApprovalRequest, data: dict[str, Any], text: str) -> ThreadItem:
        item = ThreadItem(
            seq=self.state.next_seq, turn_id=request.turn_id, type="approval", text=text, tool_call_id=request.call_id,
            tool_name=request.tool, created_at=workflow.now().timestamp(),
            data={"approval_id": request.approval_id, "arguments": request.arguments, "digest": request.digest,
                  **data},
        )
        self.state.next_seq += 1
        return item

    async def _interruptible(self, task: asyncio.Future[Any]) -> Any:
        self.inflight[task] = None
        try:
            return await task
        finally:
            self.inflight.pop(task, None)

    async def _record_outcome(self, turn: Turn, items: list[ThreadItem], status: ThreadStatus) -> None:
        self.state.next_seq = max([self.state.next_seq, *(i.seq + 1 for i in items)])
        await self._record_items(items, status)

    async def _record_items(self, items: list[ThreadItem], status: ThreadStatus) -> None:
        await RECORD_OUTCOME.execute(
            OutcomeRecord(thread_id=self.state.thread_id, turn_id=items[-1].turn_id, items=items,
                          thread_status=status),
            summary=f"record {items[-1].type}",
        )

    def _item(self, kind: Any, turn: Turn, **fields: Any) -> ThreadItem:
        item = ThreadItem(seq=self.state.next_seq, turn_id=turn.turn_id, type=kind,
                          created_at=workflow.now().timestamp(), **fields)
        self.state.next_seq += 1
        return item

    def _set_status(self, status: ThreadStatus) -> None:
        if not self._patched(LIST_RUNNING_LATE_PATCH):
            if status != self.status:
                self.status = status
                workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set(status)])
            return
        self.status = status
        # The listed status is the one this run started with (continue-as-new carries it) or last upserted.
        listed = workflow.info().typed_search_attributes.get(STATUS_ATTRIBUTE)
        if status == "running" and listed in RESTING_STATUSES:
            if self.listing_due is None:
                self.listing_due = workflow.now() + LISTED_RUNNING_AFTER
                if not self._patched(LIST_ON_REQUEST_PATCH):
                    self._list_by_timer()
            return
        self._stop_listing()
        if status != listed:
            workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set(status)])

    def _listing_request(self) -> float | None:
        """When a model call is to ask for the listing (`list_as_running`), if it falls due while the call runs."""
        if self.listing_due is None or self.listing_as_running is not None:
            return None
        return self.listing_due.timestamp()

    def _list_by_timer(self) -> None:
        """A step that is not a model call (tools, compaction) does not ask for the listing: a timer does it."""
        if self.listing_due is None or self.listing_as_running is not None:
            return
        if self.listing_due <= workflow.now():
            self._list_running_now()
        else:
            self.listing_as_running = asyncio.create_task(self._list_as_running(self.listing_due - workflow.now()))

    async def _list_as_running(self, delay: timedelta) -> None:
        await workflow.sleep(delay, summary="list the thread as running")
        self.listing_as_running = None
        self._list_running_now()

    def _list_running_now(self) -> None:
        self._stop_listing()
        workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set("running")])

    def _stop_listing(self) -> None:
        """No listing is due any more: the thread is listed running now, or it is not busy."""
        self.listing_due = None
        if self.listing_as_running is not None:
            self.listing_as_running.cancel()
            self.listing_as_running = None
