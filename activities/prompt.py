"""What the model sees, all of it: the agent's rules, the turn's instructions, the thread's latest summary (when it
was compacted), and the items after what that summary covers, within the newest HISTORY_WINDOW items, as chat
messages. `call_model` builds every prompt here and nowhere else."""

from __future__ import annotations

from typing import Any

from threadline.activities.context_window import SUMMARY_DATA_LAST, cut_text, latest_summary, unsummarised
from threadline.models.thread import ThreadItem

HISTORY_WINDOW = 400
"""Items of a thread sent to the model; older ones stay in the store."""


def system_prompt(rules: list[str], instructions: str | None, summary: ThreadItem | None = None) -> str:
    """The agent's rules (read from the spec at every call), the turn's own instructions, then the summary."""
    parts = [*rules, instructions] if instructions else list(rules)
    if summary is not None:
        parts.append(f"\nSummary of the earlier part of this conversation (items {summary.data.get('first_seq', 1)}–"
                     f"{summary.data.get(SUMMARY_DATA_LAST, 0)}; they are no longer shown):\n{summary.text}")
    return "\n".join(parts)


def prompt_messages(rules: list[str], instructions: str | None, window: list[ThreadItem],
                    item_chars: int | None = None) -> list[dict[str, Any]]:
    summary = latest_summary(window)
    return build_messages(system_prompt(rules, instructions, summary), unsummarised(window, summary), item_chars)


def build_messages(system: str, items: list[ThreadItem], item_chars: int | None = None) -> list[dict[str, Any]]:
    """Thread items → OpenAI chat messages, each item's text cut to `item_chars`. Tool calls left without a result
    (a cancelled turn) get one; a result whose call is not shown (summarised) is left out."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    open_calls: dict[str, str] = {}

    def shown(text: str) -> str:
        return cut_text(text, item_chars) if item_chars else text

    def close_open_calls() -> None:
        for call_id in open_calls:
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": "(no result: the turn was stopped)"}
            )
        open_calls.clear()

    for item in items:
        if item.type == "tool_result" and item.tool_call_id in open_calls:
            messages.append(
                {"role": "tool", "tool_call_id": item.tool_call_id, "content": shown(item.text)}
            )
            open_calls.pop(item.tool_call_id)
            continue
        if item.type not in ("user", "assistant"):
            continue
        close_open_calls()
        if item.type == "user":
            content = shown(item.text)
            if item.data.get("attachments"):
                content += "\n\nAttachments (room storage): " + ", ".join(item.data["attachments"])
            messages.append({"role": "user", "content": content})
        else:
            message: dict[str, Any] = {"role": "assistant", "content": shown(item.text) or None}
            if item.tool_calls:
                message["tool_calls"] = [
                    {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in item.tool_calls
                ]
                open_calls = {c.call_id: c.name for c in item.tool_calls}
            messages.append(message)
    close_open_calls()
    return messages
