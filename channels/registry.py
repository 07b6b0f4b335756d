"""`--channel` values → the adapters an agent process runs. `chat` serves the HTTP API and web page
(`channels.chat_http`); the terminal and `process use` deliver turns directly."""

from __future__ import annotations

from threadline.channels.base import ChannelAdapter
from threadline.channels.chat_http.app import ChatHttpChannel
from threadline.channels.mail.channel import MailChannel
from threadline.channels.queue import QueueChannel
from threadline.channels.toolkit.channel import ToolkitChannel

ADAPTERS = {"queue": QueueChannel, "mail": MailChannel, "chat": ChatHttpChannel}


def adapters_for(channels: list[str]) -> list[ChannelAdapter]:
    adapters: list[ChannelAdapter] = []
    toolkits = []
    for channel in channels:
        kind, _, value = channel.partition(":")
        if kind in ADAPTERS:
            adapters.append(ADAPTERS[kind](value))
        elif kind == "toolkit":
            toolkits.append(value)
    if toolkits:
        # All toolkits of an agent share the room's toolkit task queue: one adapter, one worker.
        adapters.append(ToolkitChannel(*toolkits))
    return adapters

