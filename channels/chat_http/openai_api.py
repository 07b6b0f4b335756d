"""The OpenAI-compatible endpoint: a chat completion is a turn on a thread.

Which thread: the `X-Thread-Id` header when a client sends one; else a `conversation` id (or
`metadata.conversation_id`); else the message history itself. Every standard client (the openai SDK with a growing
`messages` list, chat UIs, the Agents SDK) resends the whole conversation each time, so after each reply the
conversation so far is recorded as a key (a digest of the caller's scope and the messages) → its thread, and the
next request's earlier messages find it. A history that leads nowhere known (a client that started elsewhere, an
edited or regenerated message) starts a new thread with those messages recorded first: a fork, never a mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from threadline.channels.chat_feed import FeedEvent
from threadline.channels.chat_http.bodies import ApiError, invalid, openai_error
from threadline.channels.chat_http.threads_api import ChatApi
from threadline.channels.delivery import (
    new_turn_id,
    submit_turn,
)
from threadline.models.thread import PriorMessage, Reply, Turn

MAX_PRIOR_BYTES = 256 * 1024
"""Of a client's history the thread has not seen, the newest messages up to this are recorded (the model sees them
within its context window; compaction does the rest)."""


@dataclass
class Conversation:
    """A chat completion request read as a conversation: its earlier messages, the new one, the caller's scope."""

    history: list[tuple[str, str]]
    text: str
    scope: str
    instructions: str | None = None
    explicit: str | None = None
    prior: list[PriorMessage] = field(default_factory=list)

    def key(self, messages: list[tuple[str, str]] | None = None) -> str:
        value = ["conversation", self.explicit] if self.explicit else (self.history if messages is None else messages)
        return hashlib.sha256(json.dumps([self.scope, value], ensure_ascii=False).encode()).hexdigest()

    def after(self, answer: str) -> str:
        """The key the client's next request will look for once it has this answer."""
        return self.key([*self.history, ("user", self.text), ("assistant", answer)])


class OpenAiApi:
    """`/v1/models` and `/v1/chat/completions` over the same threads as the chat API."""

    def __init__(self, api: ChatApi) -> None:
        self.api = api

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.api.ref.agent_name, "object": "model", "created": 0, "owned_by": f"threadline:{self.api.ref.room}"}

    async def chat_completions(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError:
            return openai_error(400, "the body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return openai_error(400, "the body must be a JSON object", "invalid_request_error")
        model = body.get("model")
        if model != self.api.ref.agent_name:
            return openai_error(404, f"The model `{model}` does not exist: this server has `{self.api.ref.agent_name}`",
                                 "invalid_request_error", "model_not_found")
        conversation = self._conversation(request, body)
        if not conversation.text:
            return openai_error(400, "messages has no user message with text", "invalid_request_error")
        header = request.headers.get("x-thread-id")
        try:
            thread_id = await self.api.thread_id(header) if header else await self._thread_of(conversation)
        except ApiError as e:
            return openai_error(404, e.message, "invalid_request_error", "thread_not_found")
        try:
            turn = Turn(turn_id=new_turn_id(), channel="chat", sender=str(body.get("user") or "openai-client"),
                        text=conversation.text, instructions=conversation.instructions, prior=conversation.prior)
        except ValidationError as e:
            problem = invalid(e)
            return openai_error(problem.status if problem.status == 413 else 400, problem.message,
                                 "invalid_request_error")
        await self.api.touch(thread_id)
        headers = {"X-Thread-Id": thread_id, "X-Turn-Id": turn.turn_id}
        completion_id = f"chatcmpl-{turn.turn_id.removeprefix('turn-')}"
        created = int(time.time())
        if not body.get("stream"):
            reply = await submit_turn(self.api.client, self.api.ref, thread_id, turn)
            await self._remember(conversation, reply, thread_id)
            if reply.status == "failed":
                return openai_error(502, f"the turn failed: {reply.error}", "server_error", "turn_failed")
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created, "model": self.api.ref.agent_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": _usage(reply),
            }, headers=headers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = self._completion_stream(thread_id, turn, completion_id, created, include_usage, conversation)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _conversation(self, request: Request, body: dict[str, Any]) -> Conversation:
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        said = [(m.get("role"), _text(m.get("content"))) for m in messages if isinstance(m, dict)]
        last = max((n for n, (role, _) in enumerate(said) if role == "user"), default=-1)
        system = [text for role, text in said if role in ("system", "developer") and text]
        token = request.headers.get("authorization", "")
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        explicit = body.get("conversation") or metadata.get("conversation_id")
        return Conversation(
            history=[(role, text) for role, text in said[:max(last, 0)] if role in ("user", "assistant")],
            text=said[last][1] if last >= 0 else "",
            # The caller: its credentials and its `user`, so the same history from another caller is another thread.
            scope=hashlib.sha256(f"{self.api.ref.room}/{self.api.ref.agent_name}|{token}|{body.get('user') or ''}"
                                 .encode()).hexdigest(),
            instructions="\n".join(system) or None,
            explicit=str(explicit) if isinstance(explicit, (str, int)) and str(explicit) else None,
        )

    async def _thread_of(self, conversation: Conversation) -> str:
        """The conversation's thread: the one its key leads to when the thread is still there, else a new one
        with the conversation's earlier messages (they are recorded before the turn)."""
        found = await self.api.store_call(self.api.store.conversation, conversation.key()) \
            if conversation.history or conversation.explicit else None
        if found is not None and (found[1] or conversation.explicit):
            return found[0]
        thread_id = self.api.new_thread_id(None)
        prior, size = [], 0
        for role, text in reversed(conversation.history):
            size += len(text.encode())
            if size > MAX_PRIOR_BYTES:
                break
            prior.insert(0, PriorMessage(role=role, text=text))  # type: ignore[arg-type]
        conversation.prior = prior
        if conversation.explicit:
            await self.api.store_call(self.api.store.remember_conversation, conversation.key(), thread_id)
        return thread_id

    async def _remember(self, conversation: Conversation, reply: Reply, thread_id: str) -> None:
        if reply.status == "completed" and not conversation.explicit:
            await self.api.store_call(self.api.store.remember_conversation, conversation.after(reply.text), thread_id)

    async def _completion_stream(
        self, thread_id: str, turn: Turn, completion_id: str, created: int, include_usage: bool,
        conversation: Conversation,
    ) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
            payload: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": self.api.ref.agent_name,
                "choices": [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                payload["usage"] = usage
            return "data: " + json.dumps(payload, ensure_ascii=False) + "\n\n"

        feed = self.api.feed
        cursor = await feed.current_cursor(thread_id)
        live = LiveText(turn.turn_id)
        replying = asyncio.create_task(submit_turn(self.api.client, self.api.ref, thread_id, turn))
        feed.poke()
        replied = asyncio.Event()
        replying.add_done_callback(lambda _: replied.set())
        try:
            yield chunk({"role": "assistant", "content": ""})
            events = feed.follow(thread_id, cursor, replied)
            try:
                async for event in events:
                    if event is not None:
                        cursor = event.cursor or cursor
                        if text := live.apply(event):
                            yield chunk({"content": text})
            finally:
                await events.aclose()
            for event in await feed.read_after(thread_id, cursor):
                if text := live.apply(event):
                    yield chunk({"content": text})
            reply = replying.result()
            await self._remember(conversation, reply, thread_id)
            sent = live.step_text or live.final_sent
            if reply.status == "completed" and reply.text.startswith(sent) and reply.text != sent:
                yield chunk({"content": reply.text[len(sent):]})  # deltas the stream log no longer had
            if reply.status == "failed":
                error = {"message": f"the turn failed: {reply.error}", "type": "server_error", "code": "turn_failed"}
                yield "data: " + json.dumps({"error": error}) + "\n\n"
            else:
                yield chunk({}, "stop")
                if include_usage:
                    yield chunk({}, usage=_usage(reply))
            yield "data: [DONE]\n\n"
        finally:
            if not replying.done():
                replying.cancel()  # the client left; the turn goes on in Temporal




class LiveText:
    """What a client shows of one turn's streamed text: a retried model call drops its aborted attempt's text (a
    note stands in for text already sent), and each model call of the turn starts at attempt 1 again."""

    RETRY_NOTE = "\n\n(the model call was retried; its answer starts again)\n\n"

    def __init__(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self.attempt = 1
        self.step_text = ""
        self.final_sent = ""
        """The text sent for the turn's last model call so far."""

    def apply(self, event: FeedEvent) -> str:
        """The text to send for this event ('' for none)."""
        data = event.data
        if data.get("turn_id") != self.turn_id:
            return ""
        if event.event == "delta" and data["attempt"] >= self.attempt:
            self.attempt = data["attempt"]
            self.step_text += data["text"]
            return data["text"]
        if event.event == "retry":
            note = self.RETRY_NOTE if self.step_text else ""
            self.attempt, self.step_text = data["attempt"], ""
            return note
        if event.event == "item" and data.get("type") == "assistant":
            sent = self.step_text
            self.attempt, self.step_text, self.final_sent = 1, "", sent
            if data.get("tool_calls"):
                return "\n\n" if sent and not sent.endswith("\n") else ""
        return ""


def _usage(reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens,
            "total_tokens": reply.usage.total_tokens}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""
