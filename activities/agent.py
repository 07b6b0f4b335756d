"""The activities of one agent: model calls, tool calls and thread-store writes. Every side effect lives here.

Rules, tool schemas and limits are read from the worker's `AgentSpec` at each call, never from workflow input,
so an agent restarted with new rules applies them to the next turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import openai
import orjson
from openai.types.chat import ChatCompletion
from opentelemetry import trace
from temporalio import activity
from temporalio.exceptions import ApplicationError
from threadline import telemetry
from threadline.activities.compaction import ThreadCompactor, compaction_reason
from threadline.activities.context_window import (
    ContextBudget,
    calibration,
    estimate_messages,
    takes_reasoning_effort,
)
from threadline.activities.heartbeat import heartbeating
from threadline.activities.listing import listing_requested
from threadline.activities.model_provider import ModelConfigError, error_detail, model_error, resolve_model
from threadline.activities.offline import offline_completion
from threadline.activities.pricing import load_prices, priced
from threadline.activities.prompt import HISTORY_WINDOW, prompt_messages
from threadline.activities.rules import AgentRules
from threadline.activities.storage import RoomStorage
from threadline.activities.stores import RoomStreamLog, RoomThreadStore
from threadline.activities.stream_log import DeltaCoalescer, EventKind
from threadline.activities.thread_window import ThreadWindows
from threadline.activities.tools import ToolArgumentsError, Toolbox, current_call, summarize_call
from threadline.contracts import CALL_MODEL, RECORD_OUTCOME, RUN_TOOL, STORED_TRANSCRIPT
from threadline.models.limits import ErrorType
from threadline.models.spec import AgentSpec
from threadline.models.thread import (
    ModelCallInput,
    ModelStep,
    OutcomeRecord,
    StoredTranscript,
    StoredTranscriptRequest,
    ThreadItem,
    ThreadStatus,
    ToolCall,
    ToolCallInput,
    ToolOutcome,
    Usage,
)

TOOL_OUTPUT_INLINE_BYTES = 16 * 1024
"""Tool output beyond this goes to room storage; the thread keeps a preview and the path."""
TRUNCATED_NOTE = "\n\n[the answer was cut off at the model's output limit]"
CONTEXT_EXCEEDED = re.compile(r"context[_ ](length|window)|maximum context|too many tokens|prompt is too long",
                              re.IGNORECASE)


SECRET = re.compile(r"\b(sk-[A-Za-z0-9_-]{8,}|Bearer\s+\S+"
                    r"|(?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?[^\s\"',}]+)", re.IGNORECASE)
llm_log = logging.getLogger("threadline.llm")
tracer = trace.get_tracer(telemetry.TRACER_NAME)


def scrubbed(text: str, env: dict[str, str]) -> str:
    """`text` without API keys: the environment's secret values and anything shaped like a key or a token."""
    for name, value in env.items():
        if len(value) >= 8 and any(word in name.upper() for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
            text = text.replace(value, "***")
    return SECRET.sub("***", text)


class ContextExceeded(Exception):
    """The provider refused the prompt as longer than the model's context window."""


class AgentActivities:
    def __init__(
        self,
        spec: AgentSpec,
        *,
        rules: AgentRules,
        store: RoomThreadStore,
        stream: RoomStreamLog,
        storage: RoomStorage,
        toolbox: Toolbox,
        env: dict[str, str],
    ) -> None:
        self.spec = spec
        self.rules = rules
        self.store = store
        self.windows = ThreadWindows(store, HISTORY_WINDOW)
        self.stream = stream
        self.storage = storage
        self.toolbox = toolbox
        self.env = env
        self._clients: dict[tuple[str | None, str | None], openai.AsyncOpenAI] = {}
        self.prices = load_prices(spec.model_prices)
        self.compactor = ThreadCompactor(spec, store=store, client_for=self._client, env=env, prices=self.prices)

    def _client(self, base_url: str | None, api_key: str | None) -> openai.AsyncOpenAI:
        key = (base_url, api_key)
        if key not in self._clients:
            # Temporal owns retries; the client's own would multiply them and hide Retry-After. aiohttp reads a
            # streamed answer for 40 % less CPU per chunk than the default transport (bench: 0.96 against 1.6 ms for
            # 42 chunks), and every token of every answer comes through here.
            self._clients[key] = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120,
                                                    http_client=openai.DefaultAioHttpClient())
        return self._clients[key]

    async def close(self) -> None:
        """Closes the model clients' connections, once the worker has stopped (left to the garbage collector, their
        close is a coroutine nobody awaits)."""
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(client.close() for client in clients))

    async def _persist(self, thread_id: str, items: list[ThreadItem], **kwargs: Any) -> None:
        # Store calls go to a thread: a slow or locked database must not stall the worker's one event loop,
        # where every activity's heartbeats are sent.
        room, _, _ = thread_id.partition("/")
        await asyncio.to_thread(self.store.append, thread_id, items, room=room, agent=self.spec.agent_name, **kwargs)

    def _write_answer(self, call: ModelCallInput, attempt: int, unpublished: str, answer: ThreadItem,
                      status: ThreadStatus) -> None:
        """The answer's last deltas, then the answer: one trip to a thread, in the order the feed reads them."""
        if unpublished:
            self.stream.publish(call.thread_id, call.turn_id, attempt, "delta", {"text": unpublished})
        room, _, _ = call.thread_id.partition("/")
        self.store.append(call.thread_id, [answer], room=room, agent=self.spec.agent_name, status=status)

    def _answered_before(self, call: ModelCallInput) -> ThreadItem | None:
        """The final answer of this turn id from an earlier delivery that the thread no longer remembers (it keeps
        the last SEEN_TURN_IDS): the thread store is the durable record, so the turn is not run twice."""
        if call.step or not call.new_items:
            return None
        earlier = self.store.items(call.thread_id, before_seq=call.new_items[0].seq, limit=1, item_type="assistant",
                                   turn_id=call.turn_id)
        return earlier[0] if earlier and not earlier[0].tool_calls else None

    def _record_input(self, call: ModelCallInput) -> tuple[list[ThreadItem], list[str], ThreadItem | None]:
        """Writes the turn's new input, reads the prompt's history and the rules (some live in room storage): one
        trip to a thread for all. When the turn was answered before, returns that answer instead, writing nothing."""
        if (answered := self._answered_before(call)) is not None:
            return [], [], answered
        if call.new_items:
            channel = next((i.data.get("channel") for i in call.new_items if i.data.get("channel")), "chat")
            room, _, _ = call.thread_id.partition("/")
            self.store.append(call.thread_id, call.new_items, room=room, agent=self.spec.agent_name,
                              channel=channel, status="running")
        history = self.windows.read(call.thread_id, before_seq=call.answer_seq)
        return history, self.rules.current(), None

    async def _publish(self, thread_id: str, turn_id: str, attempt: int, kind: EventKind, data: dict[str, Any]) -> None:
        await asyncio.to_thread(self.stream.publish, thread_id, turn_id, attempt, kind, data)

    @CALL_MODEL.defn
    async def call_model(self, call: ModelCallInput) -> ModelStep:
        """Persists the turn's new input, rebuilds the prompt from the store, calls the model, persists its answer."""
        async with listing_requested(call.thread_id, call.turn_id, call.list_running_at):
            return await self._call_model(call)

    async def _call_model(self, call: ModelCallInput) -> ModelStep:
        requested = call.model or self.spec.model
        history, rules, answered = await asyncio.to_thread(self._record_input, call)
        if answered is not None:
            return ModelStep(text=answered.text, model=requested, max_steps=self.spec.max_steps)
        budget = ContextBudget.of(requested, self.spec.context, self.spec.max_output_tokens)
        auto = self.spec.context.management == "auto"
        messages = prompt_messages(rules, call.instructions, history, budget.item_chars if auto else None)
        tools = self.toolbox.openai_schemas() if self.toolbox.tools else []
        estimate = estimate_messages(messages, tools)
        ratio = calibration(history)
        tokens = int(estimate * ratio)
        if auto and not call.after_compaction and (reason := compaction_reason(history, estimate, ratio, budget)):
            return ModelStep(model=requested, max_steps=self.spec.max_steps, compaction_needed=reason,
                             prompt_tokens=tokens)
        try:
            name, base_url, api_key = resolve_model(requested, self.spec.model_base_url, self.env)
        except ModelConfigError as e:
            raise ApplicationError(str(e), type=ErrorType.MODEL_CONFIG_ERROR, non_retryable=True) from e
        attempt = activity.info().attempt
        if attempt > 1:
            await self._publish(call.thread_id, call.turn_id, attempt, "retry", {"step": call.step})
        deltas = DeltaCoalescer(self.stream, call.thread_id, call.turn_id, attempt)
        async with heartbeating():
            try:
                if name == "offline":
                    text, offline_calls = offline_completion(messages, set(self.toolbox.tools))
                    calls = [(None, tool_name, arguments) for tool_name, arguments in offline_calls]
                    usage = Usage(model_calls=1)
                    deltas.add(text)
                else:
                    with tracer.start_as_current_span(f"chat {name}", attributes={
                        "gen_ai.operation.name": "chat", "gen_ai.request.model": name,
                        "threadline.thread_id": call.thread_id, "threadline.turn_id": call.turn_id,
                    }) as span:
                        text, calls, usage = await self._openai_completion(name, base_url, api_key, messages, tools,
                                                                           deltas)
                        usage = priced(usage, name, self.prices)
                        span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens,
                                             "gen_ai.usage.output_tokens": usage.completion_tokens,
                                             "gen_ai.response.finish_reasons": ["tool_calls" if calls else "stop"]})
                unpublished = await deltas.finish()
            except ContextExceeded as e:
                if auto and not call.after_compaction:
                    return ModelStep(model=requested, max_steps=self.spec.max_steps,
                                     compaction_needed=f"model {name} answered: {e}", prompt_tokens=tokens)
                advice = ("set --context-window to the model's real window, or lower --compaction-threshold"
                          if auto else "use --context-management auto, or start a new thread")
                raise ApplicationError(f"the thread no longer fits the context window of model {name}: {e}; "
                                       f"{advice}", type=ErrorType.CONTEXT_WINDOW_EXCEEDED, non_retryable=True) from e
            finally:
                deltas.cancel()
        tool_calls = []
        for n, (call_id, tool_name, arguments) in enumerate(calls):
            tool = self.toolbox.get(tool_name)
            tool_calls.append(
                ToolCall(
                    call_id=call_id or f"call_{call.answer_seq}_{n}",
                    name=tool_name,
                    arguments=arguments,
                    timeout_seconds=tool.timeout_seconds if tool else 10.0,
                    max_attempts=tool.max_attempts if tool else 1,
                    calls_agent=tool.calls_agent if tool else False,
                    local=tool.local if tool else False,
                    approval_timeout_seconds=self.spec.approvals.timeout_seconds
                    if self.toolbox.needs_approval(tool_name, self.spec.approvals.require) else None,
                )
            )
        answer = ThreadItem(
            seq=call.answer_seq,
            turn_id=call.turn_id,
            type="assistant",
            text=text,
            sender=self.spec.agent_name,
            tool_calls=tool_calls,
            data={"model": requested, "usage": usage.model_dump(), "prompt_estimate": estimate},
        )
        await asyncio.to_thread(self._write_answer, call, attempt, unpublished, answer,
                                "running" if tool_calls else "idle")
        return ModelStep(
            text=text, tool_calls=tool_calls, usage=usage, model=requested,
            max_steps=self.spec.max_steps,
        )

    async def _openai_completion(
        self,
        name: str,
        base_url: str | None,
        api_key: str | None,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        deltas: DeltaCoalescer,
    ) -> tuple[str, list[tuple[str | None, str, str]], Usage]:
        """Streams the completion, publishing text deltas as they come; returns the whole answer."""
        kwargs: dict[str, Any] = {
            "model": name, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
        }
        if tools:
            kwargs["tools"] = tools
        if self.spec.max_output_tokens:
            reasoning = takes_reasoning_effort(name)
            kwargs["max_completion_tokens" if reasoning else "max_tokens"] = self.spec.max_output_tokens
        if self.spec.reasoning_effort:
            kwargs["reasoning_effort"] = self.spec.reasoning_effort
        if self.spec.log_llm_requests:
            llm_log.info("model request: %s", scrubbed(json.dumps(kwargs, ensure_ascii=False), self.env))
        text: list[str] = []
        calls: dict[int, list[str]] = {}
        usage = Usage(model_calls=1)
        finish: str | None = None
        try:
            # `chat.completions.create` re-validates every message of the prompt on each call (tens of ms of CPU for a
            # long thread); the messages are already in wire format, so post them as they are, encoded by orjson (the
            # client's `json.dumps` of a 400-message prompt cost more than the rest of the request). The chunks come
            # back as the JSON the provider sent (`AsyncStream[object]`): building a `ChatCompletionChunk` per
            # streamed token was the largest share of the worker's CPU per turn. Errors in the stream still raise.
            stream = await self._client(base_url, api_key).post(
                "/chat/completions",
                content=orjson.dumps(kwargs),
                cast_to=ChatCompletion,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            async for chunk in stream:
                if not isinstance(chunk, dict):
                    continue
                if reported := chunk.get("usage"):
                    usage = Usage(
                        prompt_tokens=reported.get("prompt_tokens") or 0,
                        completion_tokens=reported.get("completion_tokens") or 0,
                        total_tokens=reported.get("total_tokens") or 0,
                        model_calls=1,
                    )
                if not (choices := chunk.get("choices")):
                    continue
                finish = choices[0].get("finish_reason") or finish
                delta = choices[0].get("delta") or {}
                if content := delta.get("content"):
                    text.append(content)
                    deltas.add(content)
                for call in delta.get("tool_calls") or []:
                    entry = calls.setdefault(call.get("index", 0), ["", "", ""])
                    entry[0] = call.get("id") or entry[0]
                    if function := call.get("function"):
                        entry[1] += function.get("name") or ""
                        entry[2] += function.get("arguments") or ""
        except openai.BadRequestError as e:
            telemetry.in_activity(telemetry.MODEL_CALLS, "model calls, by model and outcome", model=name,
                                  outcome="refused")
            detail = error_detail(e)
            if e.code == "context_length_exceeded" or CONTEXT_EXCEEDED.search(detail):
                raise ContextExceeded(detail) from e
            raise model_error(e, name) from e
        except openai.OpenAIError as e:
            telemetry.in_activity(telemetry.MODEL_CALLS, "model calls, by model and outcome", model=name,
                                  outcome="error")
            raise model_error(e, name) from e
        telemetry.in_activity(telemetry.MODEL_CALLS, "model calls, by model and outcome", model=name,
                              outcome=finish or "cut_off")
        for kind, tokens in (("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)):
            telemetry.in_activity(telemetry.MODEL_TOKENS, "tokens the provider counted", tokens, model=name, kind=kind)
        if finish is None:
            # A stream that stops without saying why was cut off (a proxy, a crashed server): ask again.
            raise ApplicationError(f"model {name} ended its answer without a finish reason (cut off); asking again",
                                   type=ErrorType.MODEL_UNAVAILABLE)
        answer = "".join(text)
        if self.spec.log_llm_requests:
            llm_log.info("model answer (%s): %s %s", finish, scrubbed(answer, self.env),
                         scrubbed(json.dumps(calls, ensure_ascii=False), self.env) if calls else "")
        if finish == "length":
            if calls:
                raise ApplicationError(
                    f"model {name} reached its output limit in the middle of a tool call (finish_reason length): "
                    "raise the model's output limit or ask for less at a time",
                    type=ErrorType.MODEL_OUTPUT_TRUNCATED, non_retryable=True,
                )
            answer += TRUNCATED_NOTE
        return answer, [(c[0] or None, c[1], c[2] or "{}") for _, c in sorted(calls.items())], usage

    @RUN_TOOL.defn
    async def run_tool(self, request: ToolCallInput) -> ToolOutcome:
        """Runs one tool and persists its result. After the last attempt an error becomes the model's answer."""
        call = request.call
        tool = self.toolbox.get(call.name)
        attempt = activity.info().attempt
        await self._publish(request.thread_id, request.turn_id, attempt, "tool_started",
                            {"call_id": call.call_id, "summary": summarize_call(call.name, call.arguments)})
        ok = True
        if tool is None:
            ok, output = False, f"error: there is no tool named {call.name!r}; tools: {', '.join(self.toolbox.tools)}"
        else:
            try:
                current_call.set(request)
                async with heartbeating():
                    with tracer.start_as_current_span(f"execute_tool {call.name}", attributes={
                        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.name,
                        "gen_ai.tool.call.id": call.call_id,
                    }):
                        output = await asyncio.wait_for(tool.call(call.arguments), call.timeout_seconds)
                ok = not output.startswith("error:")
            except ToolArgumentsError as e:
                ok, output = False, f"error: {e}"
            except Exception as e:
                if activity.info().attempt < call.max_attempts:
                    raise
                ok, output = False, (f"error: the tool {call.name} timed out after {call.timeout_seconds:g} s"
                                     if isinstance(e, TimeoutError) else f"error: {call.name} failed: {e}")
        telemetry.in_activity(telemetry.TOOL_CALLS, "tool calls, by tool and outcome", tool=call.name,
                              outcome="ok" if ok else "error")
        text = await asyncio.to_thread(self._spill_large_output, request, output)
        item = ThreadItem(
            seq=request.seq, turn_id=request.turn_id, type="tool_result", text=text,
            tool_call_id=call.call_id, tool_name=call.name, data={"ok": ok},
        )
        await self._persist(request.thread_id, [item])
        summary = " ".join(output.split())
        await self._publish(request.thread_id, request.turn_id, attempt, "tool_finished",
                            {"call_id": call.call_id, "name": call.name, "ok": ok, "summary": summary[:120]})
        return ToolOutcome(call_id=call.call_id, name=call.name, ok=ok, summary=summary[:200])

    def _spill_large_output(self, request: ToolCallInput, output: str) -> str:
        size = len(output.encode())
        if size <= TOOL_OUTPUT_INLINE_BYTES:
            return output
        _, _, thread_path = request.thread_id.partition("/")
        path = f"{thread_path}/tool-output/{request.seq}-{request.call.name}.txt"
        self.storage.write(path, output)
        preview = output.encode()[:TOOL_OUTPUT_INLINE_BYTES].decode(errors="ignore")
        return f"{preview}\n[output truncated: {size} bytes in all, saved to room storage at {path}]"

    @RECORD_OUTCOME.defn
    async def record_outcome(self, record: OutcomeRecord) -> None:
        await self._persist(record.thread_id, record.items, status=record.thread_status)

    @STORED_TRANSCRIPT.defn
    async def stored_transcript(self, request: StoredTranscriptRequest) -> StoredTranscript:
        last = await asyncio.to_thread(self.store.items, request.thread_id, limit=1)
        return StoredTranscript(next_seq=last[0].seq + 1 if last else 1)

    def all(self) -> list[Any]:
        return [self.call_model, self.compactor.compact_thread, self.run_tool, self.record_outcome,
                self.stored_transcript]
