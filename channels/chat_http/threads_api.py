"""`ChatApi`: the routes over one agent's threads (list, create, items, turns, steer, interrupt, events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from threadline.activities.stores import open_stream_log, open_thread_store
from threadline.channels.approvals import ApprovalError, decide_approval, thread_approvals
from threadline.channels.chat_feed import Cursor, RoomFeed, StatusWatcher, follow
from threadline.channels.chat_http.bodies import (
    ApiError,
    ConfigOut,
    CreateThread,
    DecisionIn,
    InterruptIn,
    ItemsPage,
    PostTurn,
    Rename,
    SteerIn,
    ThreadList,
    ThreadOut,
    TurnAccepted,
    int_param,
    invalid,
    read_body,
)
from threadline.channels.chat_http.settings import MAX_EVENT_STREAMS, WEB_DIR, temporal_ui_base
from threadline.channels.delivery import (
    deliver_turn,
    interrupt_turn,
    new_thread_name,
    new_turn_id,
    start_turn,
    steer_turn,
    submit_turn,
)
from threadline.models.spec import AgentSpec
from threadline.models.thread import ApprovalDecision, Steer, ThreadInfo, Turn, thread_of_approval

Result = TypeVar("Result")


class ChatApi:
    """The routes, over one agent's threads."""

    def __init__(self, client: Client, spec: AgentSpec, closing: asyncio.Event) -> None:
        self.client, self.spec, self.ref = client, spec, spec.ref
        self.closing = closing
        self.store = open_thread_store(spec.room, spec.thread_store_url)
        self.log = open_stream_log(spec.room, spec.thread_store_url)
        self.watcher = StatusWatcher(client, self.store)
        self.feed = RoomFeed(self.store, self.log, self.watcher)
        self.ui = temporal_ui_base(spec)
        self.open_streams = 0

    # Helpers.

    async def store_call(self, method: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        """Every store call of a route runs off the event loop: a slow or locked store delays that request only."""
        return await asyncio.to_thread(method, *args, **kwargs)

    async def thread_id(self, raw: str) -> str:
        value = raw.strip().strip("/")
        if not value or len(value) > 500:
            raise ApiError(404, "no such thread", "not_found")
        thread_id = self.ref.thread_id(value)
        # Every request of a thread asks this: not `store.thread`, whose usage sums read all the thread's items.
        agent = await self.store_call(self.store.thread_agent, thread_id)
        mine = agent == self.ref.agent_name if agent is not None else thread_id.startswith(
            f"{self.ref.room}/{self.ref.threads_dir}/")
        if not mine:
            raise ApiError(404, f"no thread {value!r} of agent {self.ref.agent_name}", "not_found")
        return thread_id

    def temporal_url(self, thread_id: str) -> str | None:
        if self.ui is None:
            return None
        return f"{self.ui}/namespaces/{quote(self.spec.namespace, safe='')}/workflows/{quote(thread_id, safe='')}"

    async def thread_out(self, thread_id: str, status: dict[str, Any] | None = None) -> ThreadOut:
        return self.thread_out_of(thread_id, await self.store_call(self.store.thread, thread_id), status)

    def thread_out_of(self, thread_id: str, info: ThreadInfo | None, status: dict[str, Any] | None = None) -> ThreadOut:
        out = ThreadOut(
            thread_id=thread_id, name=info.name if info else "", short=thread_id.rsplit("/", 1)[-1],
            status=info.status if info else "idle", channel=info.channel if info else "chat",
            created_at=info.created_at if info else 0.0, modified_at=info.modified_at if info else 0.0,
            items=info.items if info else 0, archived=info.archived if info else False,
            temporal_url=self.temporal_url(thread_id), cost_usd=info.usage.cost_usd if info else 0.0,
        )
        if status:
            out.status = status["status"]
            out.running_turn_id = status.get("running_turn_id")
            out.queued_turn_ids = status.get("queued_turn_ids", [])
        return out

    def new_thread_id(self, main: bool | None) -> str:
        use_main = self.spec.threading_mode == "none" if main is None else main
        return self.ref.thread_id("main" if use_main else new_thread_name())

    async def touch(self, thread_id: str, name: str = "") -> None:
        """The thread is listed and not archived; a turn for it comes next, so the feed polls at its busy pace."""
        await self.store_call(self._touch, thread_id, name)
        self.feed.poke()

    def _touch(self, thread_id: str, name: str) -> None:
        self.store.ensure_thread(thread_id, room=self.spec.room, agent=self.ref.agent_name, name=name)
        self.store.archive(thread_id, False)
        if name:
            self.store.rename(thread_id, name)

    # The page.

    async def index(self, request: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def config(self, request: Request) -> Response:
        return JSONResponse(ConfigOut(
            agent=self.ref.agent_name, room=self.ref.room, threading_mode=self.spec.threading_mode,
            model=self.spec.model, namespace=self.spec.namespace, temporal_ui_url=self.ui,
            auth=bool(self.spec.http.token),
        ).model_dump())

    # Threads.

    async def list_threads(self, request: Request) -> Response:
        limit = int_param(request.query_params.get("limit"), 100, 1, 1000)
        offset = int_param(request.query_params.get("offset"), 0, 0, 10**9)
        archived = request.query_params.get("archived") in ("1", "true", "yes")
        infos = await self.store_call(self.store.threads, agent=self.ref.agent_name, limit=limit, offset=offset,
                                      archived=archived)
        threads = [self.thread_out_of(i.thread_id, i) for i in infos]
        return JSONResponse(ThreadList(threads=threads).model_dump())

    async def create_thread(self, request: Request) -> Response:
        body: CreateThread = await read_body(request, CreateThread)
        thread_id = self.new_thread_id(body.main)
        await self.touch(thread_id, body.name)
        return JSONResponse((await self.thread_out(thread_id)).model_dump(), status_code=201)

    async def get_thread(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        status = await self.watcher.status(thread_id)
        return JSONResponse((await self.thread_out(thread_id, status)).model_dump())

    async def rename_thread(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        body: Rename = await read_body(request, Rename)
        await self.store_call(self.store.ensure_thread, thread_id, room=self.spec.room, agent=self.ref.agent_name)
        await self.store_call(self.store.rename, thread_id, body.name)
        return JSONResponse((await self.thread_out(thread_id)).model_dump())

    async def archive_thread(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        if not await self.store_call(self.store.archive, thread_id):
            raise ApiError(404, "no such thread", "not_found")
        return JSONResponse((await self.thread_out(thread_id)).model_dump())

    async def items(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        limit = int_param(request.query_params.get("limit"), 50, 1, 1000)
        before = request.query_params.get("before")
        before_seq = int_param(before, 0, 0, 10**12) if before else None
        cursor = await self.feed.current_cursor(thread_id)
        items = await self.store_call(self.store.items, thread_id, before_seq=before_seq, limit=limit + 1)
        has_more = len(items) > limit
        page = ItemsPage(thread_id=thread_id, items=items[-limit:], has_more=has_more, cursor=str(cursor))
        return JSONResponse(page.model_dump(mode="json"))

    # Turns.

    async def post_turn(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        body: PostTurn = await read_body(request, PostTurn)
        try:
            turn = Turn(turn_id=body.turn_id or new_turn_id(), channel="chat", sender=body.sender, text=body.text)
        except ValidationError as e:
            raise invalid(e) from e
        await self.touch(thread_id)
        if request.query_params.get("wait") in ("1", "true", "yes"):
            reply = await submit_turn(self.client, self.ref, thread_id, turn)
            return JSONResponse(TurnAccepted(thread_id=thread_id, turn_id=turn.turn_id, reply=reply)
                                .model_dump(mode="json"))
        # Announced first: the thread may start the turn (and announce that) before start_turn returns.
        await self.store_call(self.log.publish, thread_id, turn.turn_id, 0, "accepted", {"channel": "chat"})
        try:
            await start_turn(self.client, self.ref, thread_id, turn)
        except Exception as e:
            await self.store_call(self.log.publish, thread_id, turn.turn_id, 0, "refused",
                                  {"error": f"the turn could not be delivered: {e}"})
            raise
        return JSONResponse(TurnAccepted(thread_id=thread_id, turn_id=turn.turn_id).model_dump(mode="json"),
                            status_code=202)

    async def steer(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        body: SteerIn = await read_body(request, SteerIn)
        try:
            steer = Steer(text=body.text, turn_id=body.turn_id, sender=body.sender)
        except ValidationError as e:
            raise invalid(e) from e
        try:
            await steer_turn(self.client, thread_id, steer)
            self.feed.poke()
            mode = "steer"
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            # No workflow yet: nothing runs, so the text is a new turn.
            await self.touch(thread_id)
            await deliver_turn(self.client, self.ref, thread_id,
                               Turn(turn_id=new_turn_id(), channel="chat", sender=body.sender, text=body.text))
            mode = "turn"
        self.watcher.poke(thread_id)
        return JSONResponse({"thread_id": thread_id, "delivered_as": mode}, status_code=202)

    async def approvals(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        pending = await thread_approvals(self.client, thread_id)
        return JSONResponse({"thread_id": thread_id, "approvals": [p.model_dump(mode="json") for p in pending]})

    async def decide(self, request: Request) -> Response:
        """Approve or deny: the first decision stands; a later one is answered 409 with the one that stands."""
        approval_id = request.path_params["aid"]
        thread_id = await self.thread_id(thread_of_approval(approval_id) or "/")
        body: DecisionIn = await read_body(request, DecisionIn)
        via = "web" if request.headers.get("x-threadline-client") == "web" else "api"
        try:
            outcome = await decide_approval(self.client, ApprovalDecision(
                approval_id=approval_id, approve=body.decision == "approve", by=body.by, via=via,
                reason=body.reason, digest=body.digest))
        except ApprovalError as e:
            raise ApiError(409 if e.mismatch else 404, str(e), "mismatch" if e.mismatch else "not_found") from e
        self.feed.poke()
        self.watcher.poke(thread_id)
        if outcome.already_decided:
            return JSONResponse({"error": {"message": f"already decided: {outcome.describe()}",
                                           "code": "already_decided"},
                                 "approval": outcome.model_dump(mode="json")}, status_code=409)
        return JSONResponse(outcome.model_dump(mode="json"))

    async def interrupt(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        body: InterruptIn = await read_body(request, InterruptIn)
        try:
            await interrupt_turn(self.client, thread_id, body.turn_id)
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            return JSONResponse({"thread_id": thread_id, "interrupted": False})
        self.watcher.poke(thread_id)
        return JSONResponse({"thread_id": thread_id, "interrupted": True}, status_code=202)

    async def events(self, request: Request) -> Response:
        thread_id = await self.thread_id(request.path_params["tid"])
        if self.open_streams >= MAX_EVENT_STREAMS:
            raise ApiError(503, f"this agent already serves {MAX_EVENT_STREAMS} event streams: try again later",
                           "too_many_streams")
        cursor = Cursor.parse(request.headers.get("last-event-id")) or Cursor.parse(
            request.query_params.get("after")) or await self.feed.current_cursor(thread_id)

        async def stream() -> AsyncIterator[str]:
            self.open_streams += 1
            try:
                yield f"retry: 1000\nid: {cursor}\nevent: hello\ndata: {json.dumps({'thread_id': thread_id})}\n\n"
                async for event in follow(self.feed, thread_id, cursor, self.closing):
                    yield ": keep-alive\n\n" if event is None else event.sse()
            finally:
                self.open_streams -= 1

        return StreamingResponse(stream(), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Thread-Id": thread_id,
        })

    # OpenAI-compatible.
