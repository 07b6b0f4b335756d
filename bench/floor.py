"""The floor: the least a durable agent turn can cost on Temporal, to compare Threadline's turn against.

One workflow per thread; a turn is one update-with-start whose handler runs one activity that calls the model with
the real `openai` client (retries off); `stream_turn` streams it instead, for bench.chat's time to the first
token; `tool_turn` is model -> tool -> model (the model's tool calls each run as an activity, `current_time`, then
the model is called again with their results). No thread store, no search attributes, no heartbeats.

Diagnostic variants (the workflow's start input, `FloorOptions`) add one of Threadline's costs at a time, so a gap
between the floor and Threadline can be attributed: `heartbeat` (the model activity heartbeats as Threadline's does,
heartbeat timeout 5 s), `upsert` (the status search attribute is set to running, then idle, in every turn), `timer`
(a one-second timer started as the turn starts and cancelled when it ends, as Threadline's listing timer is),
`payload` (the model activity's input, its result and the update's result padded to the sizes of Threadline's),
`history` (the model is sent the conversation, up to its newest 400 messages, as Threadline's prompt is),
`start_attributes` (every update-with-start carries Threadline's search attributes and task timeout; the driver
reads it, bench/turns.py). One variant takes a cost away instead: `plain_update` (a turn on a thread the driver has
started is a plain update, not an update-with-start).

    python -m bench.floor ADDRESS TASK_QUEUE [MAX_CACHED_WORKFLOWS]

runs a worker for it in its own process (model at OPENAI_BASE_URL); prints `ready` once it polls, stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import openai
    from openai.types.chat import ChatCompletion
    from threadline.workflows.search_attributes import STATUS_ATTRIBUTE

FLOOR_MODEL = "fake-model"
TOOL_TURN_TOOLS = [{"type": "function", "function": {
    "name": "current_time", "description": "Returns the current date and time (ISO 8601, UTC).",
    "parameters": {"type": "object", "properties": {}},
}}]
_client: openai.AsyncOpenAI | None = None


def _model() -> openai.AsyncOpenAI:
    global _client
    if _client is None:
        _client = openai.AsyncOpenAI(
            base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ.get("OPENAI_API_KEY", "x"), max_retries=0
        )
    return _client


@activity.defn(name="floor_call_model")
async def floor_call_model(text: str) -> str:
    response = await _model().chat.completions.create(model=FLOOR_MODEL, messages=[{"role": "user", "content": text}])
    return response.choices[0].message.content or ""


@activity.defn(name="floor_chat")
async def floor_chat(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One model call of a tool turn: the conversation in, the assistant's message (text or tool calls) out."""
    response = await _model().chat.completions.create(model=FLOOR_MODEL, messages=messages, tools=TOOL_TURN_TOOLS)
    return response.choices[0].message.model_dump(exclude_none=True)


@activity.defn(name="current_time")
async def current_time() -> str:
    """Returns the current date and time (ISO 8601) in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@activity.defn(name="floor_stream_model")
async def floor_stream_model(text: str) -> float:
    """Streams the reply and returns the wall-clock time (`time.time()`) its first token reached the activity: the
    earliest a durable runtime could hand it to a client (bench.chat compares its own first delta with this)."""
    first = None
    stream = await _model().chat.completions.create(model=FLOOR_MODEL, stream=True,
                                                   messages=[{"role": "user", "content": text}])
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.time()
    assert first is not None, "the model streamed no text"
    return first


PAYLOAD_PADDING = {"activity_input": 640, "activity_result": 280, "update_result": 360}
"""Bytes Threadline's turn payloads have beyond the floor's (bench.turns --keep, one turn's events)."""


HISTORY_WINDOW = 400
"""As Threadline's prompt window (activities/prompt.py): the newest messages of the conversation."""
_conversations: dict[str, list[dict[str, Any]]] = {}
"""The `history` variant's conversations, by workflow id: in this worker's memory, as no durable agent would keep
them, so that the variant adds only what sending the conversation to the model costs."""


@activity.defn(name="floor_call_model_history")
async def floor_call_model_history(text: str) -> str:
    conversation = _conversations.setdefault(activity.info().workflow_id, [])
    conversation.append({"role": "user", "content": text})
    # Posted as it is, as Threadline does: `chat.completions.create` validates each of the 400 messages again, which
    # would measure the client's validation instead of the conversation's cost.
    response = await _model().post("/chat/completions", cast_to=ChatCompletion,
                                   body={"model": FLOOR_MODEL, "messages": conversation[-HISTORY_WINDOW:]})
    answer = response.choices[0].message.content or ""
    conversation.append({"role": "assistant", "content": answer})
    return answer


@activity.defn(name="floor_call_model_padded")
async def floor_call_model_padded(text: str, padding: str) -> list[str]:
    return [await floor_call_model(text), "x" * PAYLOAD_PADDING["activity_result"]]


@activity.defn(name="floor_call_model_heartbeat")
async def floor_call_model_heartbeat(text: str) -> str:
    """Same call, heartbeating every second while it runs (as Threadline's `heartbeating()` does)."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(1.0)

    task = asyncio.create_task(beat())
    try:
        return await floor_call_model(text)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class FloorOptions:
    heartbeat: bool = False
    upsert: bool = False
    timer: bool = False
    payload: bool = False
    start_attributes: bool = False
    plain_update: bool = False
    history: bool = False


@workflow.defn(name="FloorWorkflow")
class FloorWorkflow:
    @workflow.init
    def __init__(self, options: FloorOptions) -> None:
        self.options = options

    @workflow.run
    async def run(self, options: FloorOptions) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update(name="turn")
    async def turn(self, text: str) -> str:
        if self.options.upsert:
            workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set("running")])
        listing = asyncio.create_task(workflow.sleep(timedelta(seconds=1), summary="list the thread as running")) \
            if self.options.timer else None
        if self.options.payload:
            result, _ = await workflow.execute_activity(
                floor_call_model_padded, args=[text, "x" * PAYLOAD_PADDING["activity_input"]],
                start_to_close_timeout=timedelta(minutes=5),
            )
        elif self.options.history:
            result = await workflow.execute_activity(
                floor_call_model_history, text, start_to_close_timeout=timedelta(minutes=5)
            )
        elif self.options.heartbeat:
            result = await workflow.execute_activity(
                floor_call_model_heartbeat, text, start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=5),
            )
        else:
            result = await workflow.execute_activity(
                floor_call_model, text, start_to_close_timeout=timedelta(minutes=5)
            )
        if listing is not None:
            listing.cancel()
        if self.options.upsert:
            workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set("idle")])
        if self.options.payload:
            result += "\n" + "x" * PAYLOAD_PADDING["update_result"]
        return result

    @workflow.update(name="tool_turn")
    async def tool_turn(self, text: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
        while True:
            message = await workflow.execute_activity(floor_chat, messages, start_to_close_timeout=timedelta(minutes=5))
            if not message.get("tool_calls"):
                return message.get("content") or ""
            messages.append(message)
            for call in message["tool_calls"]:
                result = await workflow.execute_activity(current_time, start_to_close_timeout=timedelta(minutes=1))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})

    @workflow.update(name="stream_turn")
    async def stream_turn(self, text: str) -> float:
        return await workflow.execute_activity(
            floor_stream_model, text, start_to_close_timeout=timedelta(minutes=5)
        )


async def _main(address: str, task_queue: str, max_cached: int) -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(address)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[FloorWorkflow],
        activities=[floor_call_model, floor_call_model_heartbeat, floor_call_model_padded, floor_call_model_history,
                    floor_stream_model, floor_chat, current_time],
        max_cached_workflows=max_cached,
    ):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1000))
