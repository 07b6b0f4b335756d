"""`--model offline`: a deterministic model that needs no network, for demos and smoke tests.

It answers every message by saying what it received, labelled as offline. To make it call a tool, put a line
`/tool NAME {"arg": "value"}` in the message (the JSON is optional); once the tools have answered, it reports
their results.
"""

from __future__ import annotations

import json
import re
from typing import Any

OFFLINE_LABEL = "[offline model]"
_TOOL_LINE = re.compile(r"^\s*/tool\s+([A-Za-z_][A-Za-z0-9_]*)\s*(\{.*\})?\s*$")


def offline_completion(messages: list[dict[str, Any]], tool_names: set[str]) -> tuple[str, list[tuple[str, str]]]:
    """Returns (text, [(tool name, JSON arguments)]) for the conversation in OpenAI chat format."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    if last_user < 0:
        return f"{OFFLINE_LABEL} Hello. Send me a message.", []
    results = [m for m in messages[last_user + 1 :] if m["role"] == "tool"]
    if results:
        names = {c["id"]: c["function"]["name"] for m in messages[last_user + 1 :] for c in m.get("tool_calls") or []}
        lines = "\n".join(f"- {names.get(r['tool_call_id'], 'tool')}: {r['content']}" for r in results)
        return f"{OFFLINE_LABEL} The tools answered:\n{lines}", []
    text = messages[last_user]["content"] or ""
    calls: list[tuple[str, str]] = []
    unknown: list[str] = []
    for line in text.splitlines():
        match = _TOOL_LINE.match(line)
        if not match:
            continue
        name, args = match.group(1), match.group(2) or "{}"
        if name not in tool_names:
            unknown.append(name)
            continue
        try:
            json.loads(args)
        except json.JSONDecodeError:
            return f"{OFFLINE_LABEL} The arguments for {name} are not valid JSON: {args}", []
        calls.append((name, args))
    if calls:
        return "", calls
    earlier = sum(1 for m in messages[:last_user] if m["role"] == "user")
    reply = f'{OFFLINE_LABEL} You said: "{text.strip()}". Earlier messages from you in this thread: {earlier}.'
    if unknown:
        reply += f" Unknown tools: {', '.join(unknown)} (available: {', '.join(sorted(tool_names))})."
    return reply, []
