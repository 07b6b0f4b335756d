"""`--channel` values → the adapters an agent process runs. Chat needs none: the terminal and `process use`
deliver turns directly."""

from __future__ import annotations

from channels.base import ChannelAdapter
from channels.queue import QueueChannel

ADAPTERS = {"queue": QueueChannel}


def adapters_for(channels: list[str]) -> list[ChannelAdapter]:
    adapters = []
    for channel in channels:
        kind, _, value = channel.partition(":")
        if kind in ADAPTERS:
            adapters.append(ADAPTERS[kind](value))
    return adapters


def unavailable(channels: list[str]) -> list[str]:
    """Channels the grammar accepts whose adapters this version does not have yet."""
    return [c for c in channels if c != "chat" and c.partition(":")[0] not in ADAPTERS]
