"""`compact_thread`: the oldest not-yet-summarised part of a thread becomes one `summary` item, written by the model.

The summary is cumulative (the summary so far plus the items it now covers), so the prompt needs only the latest
one. Nothing is deleted: the summarised items stay in the thread store for `process messages`, search and the web
page. The workflow gives the item its sequence number, so a retried attempt (a worker killed mid-summary) writes
the same item again, never a second one, and an attempt that finds it written returns it as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
from temporalio.exceptions import ApplicationError
from threadline import telemetry
from threadline.activities.context_window import (
    SUMMARY_DATA_LAST,
    SUMMARY_INSTRUCTIONS,
    ContextBudget,
    calibration,
    chunks,
    estimate_text,
    item_tokens,
    items_dropped,
    latest_summary,
    plan_cut,
    takes_reasoning_effort,
    transcript_lines,
    unsummarised,
)
from threadline.activities.heartbeat import heartbeating
from threadline.activities.model_provider import ModelConfigError, model_error, resolve_model
from threadline.activities.offline import offline_completion
from threadline.activities.pricing import Price, priced
from threadline.activities.prompt import HISTORY_WINDOW
from threadline.activities.stores import RoomThreadStore
from threadline.contracts import COMPACT_THREAD
from threadline.models.limits import ErrorType
from threadline.models.spec import AgentSpec
from threadline.models.thread import CompactionInput, CompactionResult, ThreadItem, Usage

ClientFor = Callable[[str | None, str | None], openai.AsyncOpenAI]
KEPT_ITEMS = HISTORY_WINDOW // 2
"""The most items a compaction leaves verbatim: the next one is due after as many more."""


def compaction_reason(window: list[ThreadItem], estimate: int, ratio: float, budget: ContextBudget) -> str | None:
    """Why the prompt built from `window` (`estimate` tokens, `ratio` its calibration) must be compacted before
    the model sees it."""
    tokens = int(estimate * ratio)
    summary = latest_summary(window)
    if tokens > budget.threshold:
        why = f"prompt ~{tokens:,} tokens, over the threshold of {budget.threshold:,}"
    elif items_dropped(window, HISTORY_WINDOW, summary):
        why = f"more than {HISTORY_WINDOW} items since the last summary"
    else:
        return None
    shown = unsummarised(window, summary)
    cut = plan_cut(shown, budget, ratio, KEPT_ITEMS)
    return f"items {shown[0].seq}–{shown[cut - 1].seq}: {why}" if cut else why


class ThreadCompactor:
    def __init__(self, spec: AgentSpec, *, store: RoomThreadStore, client_for: ClientFor, env: dict[str, str],
                 prices: dict[str, Price]) -> None:
        self.spec = spec
        self.prices = prices
        self.store = store
        self.client_for = client_for
        self.env = env

    def _read(self, request: CompactionInput) -> tuple[ThreadItem | None, ThreadItem | None, list[ThreadItem]]:
        """(the item already written at the request's seq, the latest summary, the items a prompt shows now)."""
        written = self.store.items(request.thread_id, before_seq=request.seq + 1, limit=1)
        if written and written[0].seq == request.seq and written[0].type == "summary":
            return written[0], None, []
        window = self.store.items(request.thread_id, before_seq=request.before_seq, limit=HISTORY_WINDOW)
        summary = latest_summary(window) or next(iter(self.store.items(
            request.thread_id, before_seq=request.before_seq, limit=1, item_type="summary")), None)
        return None, summary, window

    @COMPACT_THREAD.defn
    async def compact_thread(self, request: CompactionInput) -> CompactionResult:
        written, summary, window = await asyncio.to_thread(self._read, request)
        if written is not None:
            return CompactionResult(**{k: written.data.get(k, 0) for k in ("first_seq", "tokens_before",
                                                                           "tokens_after")},
                                    last_seq=written.data.get(SUMMARY_DATA_LAST, 0))
        requested = request.model or self.spec.model
        budget = ContextBudget.of(requested, self.spec.context, self.spec.max_output_tokens)
        shown = unsummarised(window, summary)
        ratio = calibration(window)
        cut = plan_cut(shown, budget, ratio, KEPT_ITEMS)
        before = request.prompt_tokens
        if cut == 0:
            return CompactionResult(tokens_before=before, tokens_after=before)
        covered = shown[:cut]
        model = self.spec.context.compaction_model or requested
        async with heartbeating():
            text, usage = await self._summarise(model, budget, ratio, summary.text if summary else "", covered)
        first_seq = summary.data.get("first_seq", 1) if summary else covered[0].seq
        item = ThreadItem(
            seq=request.seq, turn_id=request.turn_id, type="summary", text=text, sender=model,
            data={"first_seq": first_seq, SUMMARY_DATA_LAST: covered[-1].seq, "items": len(covered),
                  "reason": request.reason, "model": model, "usage": usage.model_dump()},
        )
        freed = sum(item_tokens(i, budget) for i in covered) - estimate_text(text)
        after = max(before - int(freed * ratio), 0)
        item.data |= {"tokens_before": before, "tokens_after": after}
        room, _, _ = request.thread_id.partition("/")
        await asyncio.to_thread(self.store.append, request.thread_id, [item], room=room, agent=self.spec.agent_name)
        telemetry.in_activity(telemetry.COMPACTIONS, "threads compacted", model=model)
        return CompactionResult(first_seq=first_seq, last_seq=covered[-1].seq, tokens_before=before,
                                tokens_after=after, usage=usage)

    async def _summarise(self, model: str, budget: ContextBudget, ratio: float, so_far: str,
                         items: list[ThreadItem]) -> tuple[str, Usage]:
        """The summary so far merged with `items`, one request per chunk that fits the model."""
        try:
            name, base_url, api_key = resolve_model(model, self.spec.model_base_url, self.env)
        except ModelConfigError as e:
            raise ApplicationError(str(e), type=ErrorType.MODEL_CONFIG_ERROR, non_retryable=True) from e
        usage = Usage()
        words = budget.summary * 3 // 4
        for chunk in chunks(transcript_lines(items, budget), budget, ratio):
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": SUMMARY_INSTRUCTIONS.format(words=words)},
                {"role": "user", "content": f"Summary so far:\n{so_far or '(none yet)'}\n\nNew messages:\n{chunk}"},
            ]
            if name == "offline":
                so_far, _ = offline_completion(messages, set())
                usage += Usage(model_calls=1)
                continue
            kwargs: dict[str, Any] = {"model": name, "messages": messages}
            if not takes_reasoning_effort(name):
                kwargs["max_tokens"] = budget.summary
            try:
                response = await self.client_for(base_url, api_key).chat.completions.create(**kwargs)
            except openai.OpenAIError as e:
                raise model_error(e, name) from e
            so_far = (response.choices[0].message.content or "").strip() if response.choices else ""
            if response.usage is not None:
                usage += priced(Usage(prompt_tokens=response.usage.prompt_tokens or 0,
                                      completion_tokens=response.usage.completion_tokens or 0,
                                      total_tokens=response.usage.total_tokens or 0, model_calls=1), name, self.prices)
            else:
                usage += Usage(model_calls=1)
        if not so_far:
            raise ApplicationError(f"model {name} wrote an empty summary; asking again", type=ErrorType.MODEL_FAILED)
        return so_far, usage
