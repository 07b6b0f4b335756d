"""What a channel adapter is to the agent process: extra Temporal workers and/or a server, run beside the agent's
own worker from start to graceful stop. Adapters parse input, derive the thread id and deliver turns through
`channels.delivery`; routing, retries and persistence stay in the runtime."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.worker import Worker
from threadline.models import AgentSpec


@dataclass
class ChannelContext:
    client: Client
    spec: AgentSpec


class ChannelAdapter:
    """Base adapter: override `workers` for Temporal-side work, `serve` for a server (SMTP, HTTP)."""

    name: str = "channel"

    def workers(self, context: ChannelContext) -> list[Worker]:
        return []

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        """Runs until `stop` is set. The default has nothing to serve."""
        await stop.wait()
