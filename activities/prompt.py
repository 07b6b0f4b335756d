"""What the model sees, all of it: the agent's rules, the turn's instructions, and the newest HISTORY_WINDOW items of
the thread as chat messages. `call_model` builds every prompt here and nowhere else."""

from __future__ import annotations

from typing import Any

from threadline.models.thread import ThreadItem

HISTORY_WINDOW = 400
"""Items of a thread sent to the model; older ones stay in the store."""


def system_prompt(rules: list[str], instructions: str | None) -> str:
    """The agent's rules (read from the spec at every call), then the turn's own instructions."""
    return "\n".join([*rules, instructions] if instructions else rules)


def prompt_messages(rules: list[str], instructions: str | None, history: list[ThreadItem]) -> list[dict[str, Any]]:
    return build_messages(system_prompt(rules, instructions), history)


def build_messages(system: str, items: list[ThreadItem]) -> list[dict[str, Any]]:
    """Thread items → OpenAI chat messages. Tool calls left without a result (a cancelled turn) get one."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    open_calls: dict[str, str] = {}

    def close_open_calls() -> None:
        for call_id in open_calls:
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": "(no result: the turn was stopped)"}
            )
        open_calls.clear()

    for item in items:
        if item.type == "tool_result" and item.tool_call_id in open_calls:
            messages.append(
                {"role": "tool", "tool_call_id": item.tool_call_id, "content": item.text}
            )
            open_calls.pop(item.tool_call_id)
            continue
        if item.type not in ("user", "assistant"):
            continue
        close_open_calls()
        if item.type == "user":
            content = item.text
            if item.data.get("attachments"):
                content += "\n\nAttachments (room storage): " + ", ".join(item.data["attachments"])
            messages.append({"role": "user", "content": content})
        else:
            message: dict[str, Any] = {"role": "assistant", "content": item.text or None}
            if item.tool_calls:
                message["tool_calls"] = [
                    {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in item.tool_calls
                ]
                open_calls = {c.call_id: c.name for c in item.tool_calls}
            messages.append(message)
    close_open_calls()
    return messages
