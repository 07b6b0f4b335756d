"""The approvals of one thread run: tool calls waiting for a person, and the decisions made.

Deterministic workflow code: a decision arrives as the thread's `decide_approval` update, so it is in the thread's
history before anything acts on it. The first decision wins; a second one is answered with the first and changes
nothing; an approved call is scheduled once, by the workflow, after the decision (a worker killed in between
replays the decision and schedules it then, still once).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from threadline.models.limits import ErrorType
    from threadline.models.thread import ApprovalDecision, ApprovalOutcome, ApprovalRequest, ToolCallInput

KEPT_DECISIONS = 1000
CARRIED_DECISIONS = 100
"""Decisions a new run (continue-as-new) still knows, so a late second click is told who decided."""


def arguments_digest(tool: str, arguments: str) -> str:
    return hashlib.sha256(f"{tool}\0{arguments}".encode()).hexdigest()[:16]


def approval_id(request: ToolCallInput) -> str:
    return f"{request.thread_id}:{request.seq}"


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


class ThreadApprovals:
    def __init__(self, decided: list[ApprovalOutcome] = (), waiting: list[ApprovalRequest] = ()) -> None:
        self.pending: dict[str, ApprovalRequest] = {r.approval_id: r for r in waiting}
        self.decided: dict[str, ApprovalOutcome] = {d.approval_id: d for d in decided}

    def carried(self) -> list[ApprovalOutcome]:
        return list(self.decided.values())[-CARRIED_DECISIONS:]

    def undecided(self, approval_id: str) -> bool:
        return approval_id in self.pending and approval_id not in self.decided

    def request(self, call: ToolCallInput, now: float, timeout: float) -> ApprovalRequest:
        request = ApprovalRequest(
            approval_id=approval_id(call), thread_id=call.thread_id, turn_id=call.turn_id, call_id=call.call.call_id,
            tool=call.call.name, arguments=call.call.arguments,
            digest=arguments_digest(call.call.name, call.call.arguments), requested_at=now, expires_at=now + timeout,
        )
        self.pending[request.approval_id] = request
        return request

    def validate(self, decision: ApprovalDecision) -> None:
        """Refuses, before it enters the history, a decision on nothing or on other arguments than requested."""
        request = self.pending.get(decision.approval_id)
        if request is None and decision.approval_id not in self.decided:
            raise ApplicationError(f"no approval {decision.approval_id} is waiting in this thread",
                                   type=ErrorType.NO_SUCH_APPROVAL, non_retryable=True)
        if request is not None and decision.digest and decision.digest != request.digest:
            raise ApplicationError(
                f"approval {decision.approval_id} is for {request.tool} with arguments {request.digest}, not "
                f"{decision.digest}: look at the request again", type=ErrorType.APPROVAL_MISMATCH, non_retryable=True)

    def decide(self, decision: ApprovalDecision, now: float) -> ApprovalOutcome:
        earlier = self.decided.get(decision.approval_id)
        if earlier is not None:
            return earlier.model_copy(update={"already_decided": True})
        request = self.pending[decision.approval_id]
        return self._settle(ApprovalOutcome(
            approval_id=request.approval_id, approved=decision.approve, by=decision.by, via=decision.via, at=now,
            reason=decision.reason.strip(), digest=request.digest,
        ))

    def _settle(self, outcome: ApprovalOutcome) -> ApprovalOutcome:
        self.decided[outcome.approval_id] = outcome
        if len(self.decided) > KEPT_DECISIONS:
            self.decided.pop(next(iter(self.decided)))
        return outcome

    async def wait(self, request: ApprovalRequest, remaining: float | None = None) -> ApprovalOutcome:
        """The decision on `request`; past its expiry, a denial that says so. `remaining`: what is left of the
        timeout, for a request that a previous run began waiting for."""
        timeout = request.expires_at - request.requested_at
        try:
            await workflow.wait_condition(lambda: request.approval_id in self.decided,
                                          timeout=timedelta(seconds=max(remaining if remaining is not None
                                                                        else timeout, 0.001)))
        except TimeoutError:
            self._settle(ApprovalOutcome(
                approval_id=request.approval_id, approved=False, by="timeout", via="timeout",
                at=workflow.now().timestamp(), reason=f"no decision within {_duration(timeout)}",
                digest=request.digest,
            ))
        finally:
            self.pending.pop(request.approval_id, None)
        return self.decided[request.approval_id]
