"""How much of a thread fits its model: context windows, token estimates calibrated by the provider's own counts,
and where a compaction may cut a thread (never between a tool call and its results).

No tokenizer: a tokenizer that matches every OpenAI-compatible server does not exist, and the ones that come close
download their tables at run time. The estimate is characters / 4, scaled by the ratio between what the provider
reported and what was estimated for the thread's last model call, so a server that counts differently (a local
model's tokenizer, a 1.7× denser script) is measured, not guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from threadline.models.spec import ContextSettings
from threadline.models.thread import ThreadItem

CONTEXT_WINDOWS = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1-mini": 128_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}
"""Context windows of common OpenAI models by name prefix (the longest prefix wins); `--context-window` for others."""
DEFAULT_WINDOW = 32_768
"""For a model the table does not know (a local server's): small enough for most, and a server that answers
`context_length_exceeded` still gets a compaction and a second try."""
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
"""Models that take `reasoning_effort` (and `max_completion_tokens` instead of `max_tokens`)."""

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
RATIO_BOUNDS = (0.5, 4.0)
SUMMARY_DATA_LAST = "last_seq"


def _known(model: str) -> str | None:
    name = model.rpartition("/")[2]
    return max((p for p in CONTEXT_WINDOWS if name.startswith(p)), key=len, default=None)


def context_window(model: str, configured: int | None) -> int:
    if configured:
        return configured
    prefix = _known(model)
    return CONTEXT_WINDOWS[prefix] if prefix else DEFAULT_WINDOW


def takes_reasoning_effort(model: str) -> bool | None:
    """True or False for a model we know; None for one we cannot tell (a model behind another server)."""
    name = model.rpartition("/")[2]
    if name.startswith(REASONING_PREFIXES):
        return True
    return False if _known(model) or name == "offline" else None


@dataclasses.dataclass(frozen=True)
class ContextBudget:
    """What one model's prompt may hold, in tokens."""

    window: int
    threshold: int
    """A prompt estimated above this is compacted before the model sees it."""
    keep: int
    """What a compaction keeps verbatim: the newest turns, up to this."""
    item: int
    """The most that one item (a tool result, a long message) contributes to a prompt."""
    summary: int
    """The most that a summary may hold."""

    @classmethod
    def of(cls, model: str, settings: ContextSettings, max_output_tokens: int | None) -> ContextBudget:
        window = context_window(model, settings.window)
        reserve = max_output_tokens or min(4096, window // 4)
        threshold = settings.threshold or int((window - reserve) * 0.8)
        return cls(window=window, threshold=threshold, keep=threshold // 2, item=max(256, threshold // 8),
                   summary=max(256, min(4096, threshold // 4)))

    @property
    def item_chars(self) -> int:
        return self.item * CHARS_PER_TOKEN


def check_context_settings(model: str, settings: ContextSettings, max_output_tokens: int | None) -> str | None:
    """The settings' mistake in words, or None: a threshold the window cannot hold is refused at start-up."""
    budget = ContextBudget.of(model, settings, max_output_tokens)
    reserve = max_output_tokens or 0
    if budget.threshold + reserve >= budget.window:
        plus = f" plus --max-output-tokens {reserve}" if reserve else ""
        return (f"--compaction-threshold {budget.threshold}{plus} does not fit the context window of {model} "
                f"({budget.window} tokens): lower it, or set --context-window")
    return None


def estimate_text(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS


def estimate_messages(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()) -> int:
    """Chat messages (and tool schemas) → estimated prompt tokens, before calibration."""
    chars = 0
    for message in messages:
        chars += len(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            chars += len(call["function"]["name"]) + len(call["function"]["arguments"])
    chars += sum(len(str(tool)) for tool in tools)
    return chars // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS * len(messages)


def calibration(items: Sequence[ThreadItem]) -> float:
    """Provider tokens per estimated token, from the newest answer that recorded both; 1.0 before there is one."""
    for item in reversed(items):
        usage = item.data.get("usage") or {}
        estimate = item.data.get("prompt_estimate") or 0
        if item.type == "assistant" and usage.get("prompt_tokens") and estimate:
            return min(max(usage["prompt_tokens"] / estimate, RATIO_BOUNDS[0]), RATIO_BOUNDS[1])
    return 1.0


def latest_summary(items: Sequence[ThreadItem]) -> ThreadItem | None:
    return next((i for i in reversed(items) if i.type == "summary"), None)


def unsummarised(items: Sequence[ThreadItem], summary: ThreadItem | None) -> list[ThreadItem]:
    """The items a prompt shows verbatim: those after what `summary` covers (summaries themselves excluded)."""
    last = summary.data.get(SUMMARY_DATA_LAST, 0) if summary is not None else 0
    return [i for i in items if i.type != "summary" and i.seq > last]


def items_dropped(window: Sequence[ThreadItem], limit: int, summary: ThreadItem | None) -> bool:
    """The window is full and starts after the summary's end: items between them would fall out of the prompt."""
    last = summary.data.get(SUMMARY_DATA_LAST, 0) if summary is not None else 0
    return len(window) >= limit and window[0].seq > last + 1


def item_tokens(item: ThreadItem, budget: ContextBudget) -> int:
    chars = len(item.text) + sum(len(c.name) + len(c.arguments) for c in item.tool_calls)
    return min(chars // CHARS_PER_TOKEN, budget.item) + MESSAGE_OVERHEAD_TOKENS


def plan_cut(items: Sequence[ThreadItem], budget: ContextBudget, ratio: float, kept_items: int) -> int:
    """How many of the oldest `items` to summarise: the fewest that leave the rest within `budget.keep` and at most
    `kept_items` items (a thread of short messages outgrows the item window long before the token budget: cutting
    only what overflows it would compact again at every turn). A cut
    falls only before a user message or before an answer whose earlier tool calls all have their results, so a
    call and its result are never split; it keeps the newest turn whole unless that turn alone passes the
    threshold. 0: no cut is possible."""
    boundaries: list[int] = []
    turn_starts: list[int] = []
    open_calls: set[str] = set()
    for n, item in enumerate(items):
        # Before a user message is always a cut (a stopped turn's calls have no results; the prompt closes them).
        if n and (item.type == "user" or (item.type == "assistant" and not open_calls)):
            boundaries.append(n)
            if item.type == "user" and not item.data.get("steer"):
                turn_starts.append(n)
        if item.type == "assistant":
            open_calls = {c.call_id for c in item.tool_calls}
        elif item.type == "tool_result":
            open_calls.discard(item.tool_call_id or "")
        elif item.type == "user":
            open_calls = set()
    if not boundaries:
        return 0
    suffix = [0] * (len(items) + 1)
    for n in range(len(items) - 1, -1, -1):
        suffix[n] = suffix[n + 1] + int(item_tokens(items[n], budget) * ratio)
    fitting = [n for n in boundaries if suffix[n] <= budget.keep and len(items) - n <= kept_items]
    if fitting:
        return fitting[0]
    if turn_starts and suffix[turn_starts[-1]] + budget.summary <= budget.threshold:
        return turn_starts[-1]
    return boundaries[-1]


SUMMARY_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between users and an AI agent, so that the agent can go on "
    "without the messages the summary replaces. Merge the summary so far with the new messages into one summary. "
    "Keep every fact, name, number, identifier, date, decision, commitment, open question and the user's "
    "preferences; keep what tools returned that still matters, and which tool produced it. Drop greetings and "
    "repetition. Write plain text in the conversation's language, at most {words} words."
)


def transcript_lines(items: Sequence[ThreadItem], budget: ContextBudget) -> list[str]:
    """The items to summarise as text, one block each, every block cut to what one item may contribute."""
    lines = []
    for item in items:
        if item.type == "user":
            head = f"[{item.seq}] user {item.sender}".rstrip()
        elif item.type == "assistant":
            head = f"[{item.seq}] assistant"
        elif item.type == "tool_result":
            head = f"[{item.seq}] tool {item.tool_name or ''} result".replace("  ", " ")
        else:
            continue
        text = item.text
        for call in item.tool_calls:
            text += f"\n→ calls {call.name} {call.arguments}"
        lines.append(f"{head}: {cut_text(text, budget.item_chars)}")
    return lines


def cut_text(text: str, limit: int) -> str:
    """The head and the tail of a long text (the tail of a spilled tool output says where the whole of it is)."""
    if len(text) <= limit:
        return text
    tail = min(400, limit // 4)
    return (f"{text[:limit - tail]}\n[… {len(text) - limit:,} characters of this item left out here; the thread "
            f"store has them all …]\n{text[-tail:]}")


def chunks(lines: Sequence[str], budget: ContextBudget, ratio: float) -> list[str]:
    """Transcript lines grouped so that each summary request (instructions, the summary so far, one chunk and the
    answer) fits the window, with a margin for the estimate."""
    room = int(max((budget.window - 2 * budget.summary - 300) * 0.7, budget.item * 2) * CHARS_PER_TOKEN / ratio)
    grouped: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        if current and size + len(line) > room:
            grouped.append("\n\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        grouped.append("\n\n".join(current))
    return grouped
