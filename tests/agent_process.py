"""Runs one agent worker in its own process, so tests can kill -9 it mid-turn.

    python -m tests.agent_process ADDRESS SPEC_JSON [with-channels]

With `with-channels`, the process also runs the adapters of the spec's channels (queue, toolkit). Prints `ready`
once the worker polls; SIGTERM shuts it down gracefully.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from threadline import worker
from threadline.channels.delivery import connect
from threadline.channels.registry import adapters_for
from threadline.models.spec import AgentSpec


async def main(address: str, spec_json: str, with_channels: bool = False) -> None:
    spec = AgentSpec.model_validate_json(spec_json)
    client = await connect(address)
    stop, ready = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    channels = adapters_for(spec.channels) if with_channels else []
    runner = asyncio.create_task(worker.run_agent(client, spec, stop, ready, channels=channels))
    await ready.wait()
    print("ready", flush=True)
    await runner


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "with-channels"))
