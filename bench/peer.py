"""The peer: the OpenAI Agents SDK on Temporal (`temporalio-openai-agents`), run as its documentation shows, to compare
Threadline's turn against an agent runtime of the same kind.

One workflow per thread; a turn is one update-with-start whose handler runs `Runner.run` with the conversation so
far (`result.to_input_list()` of the previous turn plus the new message), so the model sees the whole thread as it
does in Threadline. The plugin runs each model call as an activity; `tool_turn` gives the agent one tool,
`current_time`, as an activity (`activity_as_tool`, as the plugin's documentation does), for model -> tool -> model. The model is the same fake, through its chat
completions endpoint (`OpenAIProvider(use_responses=False)`: the fake speaks no Responses API).

    python -m bench.peer ADDRESS TASK_QUEUE [MAX_CACHED_WORKFLOWS]

runs a worker in its own process (model at OPENAI_BASE_URL); prints `ready` once it polls, stops on SIGTERM. Needs
the `bench` extra: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from agents import Agent, Runner
    from temporalio.openai_agents.workflow import activity_as_tool

    from bench.floor import current_time

PEER_MODEL = "fake-model"
INSTRUCTIONS = "You are a helpful assistant."


@workflow.defn(name="PeerAgentWorkflow")
class PeerAgentWorkflow:
    @workflow.init
    def __init__(self) -> None:
        self.conversation: list[Any] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update(name="turn")
    async def turn(self, text: str) -> str:
        return await self._run(Agent(name="peer", instructions=INSTRUCTIONS, model=PEER_MODEL), text)

    @workflow.update(name="tool_turn")
    async def tool_turn(self, text: str) -> str:
        tool = activity_as_tool(current_time, start_to_close_timeout=timedelta(minutes=1))
        return await self._run(Agent(name="peer", instructions=INSTRUCTIONS, model=PEER_MODEL, tools=[tool]), text)

    async def _run(self, agent: Agent, text: str) -> str:
        result = await Runner.run(agent, [*self.conversation, {"role": "user", "content": text}])
        self.conversation = result.to_input_list()
        return str(result.final_output)


async def _main(address: str, task_queue: str, max_cached: int) -> None:
    from agents.models.openai_provider import OpenAIProvider
    from temporalio.client import Client
    from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
    from temporalio.worker import Worker

    plugin = OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(start_to_close_timeout=timedelta(minutes=5)),
        model_provider=OpenAIProvider(use_responses=False),
    )
    client = await Client.connect(address, plugins=[plugin])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Worker(client, task_queue=task_queue, workflows=[PeerAgentWorkflow], activities=[current_time],
                      max_cached_workflows=max_cached):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1000))
