"""Runs one agent answering a mailbox (`--channel mail:ADDRESS`) in its own process, so tests can kill -9 it.

    python -m tests.mail_consumer_process ADDRESS SPEC_JSON

Prints `ready` once its workers poll; SIGTERM shuts it down gracefully.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from threadline.channels.delivery import connect
from threadline.channels.mail.channel import MailChannel
from threadline.models.spec import AgentSpec
from threadline.worker import run_agent


async def main(address: str, spec_json: str, channel: str) -> None:
    spec = AgentSpec.model_validate_json(spec_json)
    client = await connect(address)
    stop, ready = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    runner = asyncio.create_task(run_agent(client, spec, stop, ready, channels=[MailChannel(channel)]))
    await ready.wait()
    print("ready", flush=True)
    await runner


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
