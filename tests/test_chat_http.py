"""The chat channel over HTTP against a real agent worker: API, SSE (reconnect, two clients, retries), interrupts,
auth, and the OpenAI-compatible endpoint driven by the official `openai` client."""

from __future__ import annotations

import asyncio
import threading

import httpx
import openai
import pytest
from temporalio.client import Client
from threadline.channels.chat_http import threads_api
from threadline.channels.chat_http.settings import HttpConfigError, check_settings
from threadline.channels.delivery import connect, new_turn_id
from threadline.models.limits import MAX_TURN_TEXT_BYTES
from threadline.models.spec import HttpSettings

from tests.chat_http_support import chat_server, deltas, ended, sse
from tests.cli_helpers import run_cli
from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.runtime_support import eventually
from tests.temporal_server import TemporalDevServer


async def _new_thread(http: httpx.AsyncClient) -> str:
    response = await http.post("/api/threads", json={})
    assert response.status_code == 201, response.text
    return response.json()["thread_id"]


async def test_threads_turns_items_rename_archive(temporal_client: Client, agent_spec):
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        config = (await http.get("/api/config")).json()
        assert config["agent"] == "support" and config["temporal_ui_url"] == "http://localhost:8233"
        thread_id = await _new_thread(http)
        assert thread_id.startswith(f"{agent_spec.room}/.threads/support/")

        posted = await http.post(f"/api/threads/{thread_id}/turns?wait=true", json={"text": "hello there"})
        assert posted.status_code == 200, posted.text
        assert posted.json()["reply"]["text"] == "echo: hello there"

        listed = (await http.get("/api/threads")).json()["threads"]
        assert [(t["thread_id"], t["name"], t["status"]) for t in listed] == [(thread_id, "hello there", "idle")]
        assert listed[0]["temporal_url"].endswith(
            "/namespaces/default/workflows/" + thread_id.replace("/", "%2F"))

        page = (await http.get(f"/api/threads/{thread_id}/items", params={"limit": 1})).json()
        assert [i["type"] for i in page["items"]] == ["assistant"] and page["has_more"]
        older = (await http.get(f"/api/threads/{thread_id}/items",
                                params={"limit": 1, "before": page["items"][0]["seq"]})).json()
        assert [i["text"] for i in older["items"]] == ["hello there"] and not older["has_more"]

        short = thread_id.rsplit("/", 1)[-1]
        assert (await http.patch(f"/api/threads/{short}", json={"name": "Greetings"})).json()["name"] == "Greetings"
        assert (await http.get(f"/api/threads/{thread_id}")).json()["status"] == "idle"
        assert (await http.delete(f"/api/threads/{thread_id}")).status_code == 200
        assert (await http.get("/api/threads")).json()["threads"] == []
        assert (await http.get("/api/threads", params={"archived": "true"})).json()["threads"][0]["archived"]

        assert (await http.get("/api/threads/elsewhere/.threads/other/x/items")).status_code == 404
        assert (await http.post(f"/api/threads/{thread_id}/turns", json={"text": ""})).status_code == 422


async def test_sse_reconnect_with_last_event_id_misses_and_repeats_nothing(
    temporal_client: Client, agent_spec, fake_model: FakeOpenAI
):
    words = " ".join(f"w{n}" for n in range(120))
    fake_model.enqueue(FakeResponse.text(words, chunk_delay=0.01))
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        async with sse(http, f"/api/threads/{thread_id}/events") as first:
            turn_id = (await http.post(f"/api/threads/{thread_id}/turns", json={"text": "long"})).json()["turn_id"]
            await first.wait_for(lambda evs: sum(e.event == "delta" for e in evs) >= 2)
        seen = list(first.events)
        async with sse(http, f"/api/threads/{thread_id}/events", {"Last-Event-ID": first.last_id}) as second:
            await second.wait_for(ended(turn_id))
        ids = [e.id for e in seen + second.events if e.id and e.event != "hello"]
        assert len(ids) == len(set(ids)), "an event came twice"
        assert deltas(seen + second.events, turn_id) == words
        assert any(e.event == "delta" for e in second.events), "the reconnect came after the end: test too slow"


async def test_two_clients_and_a_late_one_see_the_same_stream(
    temporal_client: Client, agent_spec, fake_model: FakeOpenAI
):
    words = " ".join(f"w{n}" for n in range(80))
    fake_model.enqueue(FakeResponse.text(words, chunk_delay=0.01))
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        path = f"/api/threads/{thread_id}/events"
        async with sse(http, path) as one, sse(http, path) as two:
            turn_id = (await http.post(f"/api/threads/{thread_id}/turns", json={"text": "x"})).json()["turn_id"]
            await one.wait_for(lambda evs: sum(e.event == "delta" for e in evs) >= 3)
            async with sse(http, path) as late:  # joins mid-turn, without a cursor
                await late.wait_for(ended(turn_id))
            await one.wait_for(ended(turn_id))
            await two.wait_for(ended(turn_id))
        replayable = lambda r: [(e.id, e.event, e.data) for e in r.events if e.id and e.event != "hello"]  # noqa: E731
        assert replayable(one) == replayable(two)
        assert deltas(one.events, turn_id) == deltas(late.events, turn_id) == words
        phases = [e.data["phase"] for e in one.events if e.event == "turn"]
        assert phases[0] == "accepted" and "started" in phases and phases[-1] == "ended"
        assert any(e.event == "status" and e.data["status"] == "running" for e in one.events)


async def test_a_retried_model_call_is_announced_and_its_text_dropped(
    temporal_client: Client, agent_spec, fake_model: FakeOpenAI
):
    fake_model.enqueue(
        FakeResponse.text("this attempt breaks off half way", chunk_delay=0.05, drop_after_chunks=3),
        FakeResponse.text("the answer"),
    )
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        async with sse(http, f"/api/threads/{thread_id}/events") as reader:
            turn_id = (await http.post(f"/api/threads/{thread_id}/turns", json={"text": "hi"})).json()["turn_id"]
            await reader.wait_for(ended(turn_id), timeout=60)
        assert any(e.event == "retry" and e.data["attempt"] == 2 for e in reader.events)
        assert deltas(reader.events, turn_id) == "the answer"


async def test_tools_interrupt_and_steer(temporal_client: Client, agent_spec, fake_model: FakeOpenAI):
    release = threading.Event()
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        async with sse(http, f"/api/threads/{thread_id}/events") as reader:
            tool_turn = (await http.post(f"/api/threads/{thread_id}/turns",
                                         json={"text": "CALL_TOOL current_time {}"})).json()["turn_id"]
            await reader.wait_for(ended(tool_turn))
            tools = [(e.data["phase"], e.data.get("summary", "")[:12]) for e in reader.events if e.event == "tool"]
            assert tools[0] == ("started", "current_time") and tools[1][0] == "finished"

            fake_model.enqueue(FakeResponse.block(release, then=FakeResponse.text("too late"), timeout=60))
            long_turn = (await http.post(f"/api/threads/{thread_id}/turns", json={"text": "take your time"})
                         ).json()["turn_id"]
            await reader.wait_for(lambda evs: any(e.event == "status" and e.data["running_turn_id"] == long_turn
                                                  for e in evs))
            queued = (await http.post(f"/api/threads/{thread_id}/turns", json={"text": "after that"})).json()
            steered = await http.post(f"/api/threads/{thread_id}/steer", json={"text": "also this"})
            assert steered.status_code == 202 and steered.json()["delivered_as"] == "steer"
            assert (await http.post(f"/api/threads/{thread_id}/interrupt", json={})).json()["interrupted"]
            await reader.wait_for(ended(long_turn))
            await reader.wait_for(ended(f"{long_turn}-steer-1"))
            await reader.wait_for(ended(queued["turn_id"]))
        release.set()
        # The steer came too late for the interrupted turn, so it ran as the next turn, ahead of the queue.
        assert [r.last_user_text for r in fake_model.requests[-2:]] == ["also this", "after that"]
        items = (await http.get(f"/api/threads/{thread_id}/items")).json()["items"]
        answered = [(i["type"], i["text"]) for i in items if i["turn_id"] in (f"{long_turn}-steer-1", queued["turn_id"])]
        assert answered == [("user", "also this"), ("assistant", "echo: also this"),
                            ("user", "after that"), ("assistant", "echo: after that")]
        end = next(e for e in reader.events if e.event == "turn" and e.data["phase"] == "ended"
                   and e.data["turn_id"] == long_turn)
        assert end.data["status"] == "cancelled"
        assert any(e.event == "turn" and e.data["phase"] == "accepted" and e.data["turn_id"] == queued["turn_id"]
                   for e in reader.events)
        assert any(e.event == "status" and queued["turn_id"] in e.data["queued_turn_ids"] for e in reader.events)


async def test_turn_events_set_the_status_without_asking_the_workflow(temporal_client: Client, agent_spec,
                                                                      fake_model: FakeOpenAI, monkeypatch):
    """Ten turns in a row on a followed thread: its status follows their events (a turn waiting behind the
    running one is listed as queued, the thread is idle at the end) with a few queries, not three per turn."""
    from threadline.channels import chat_feed

    queries = 0
    snapshot = chat_feed.thread_snapshot

    async def counted(client: Client, thread_id: str):  # noqa: ANN202
        nonlocal queries
        queries += 1
        return await snapshot(client, thread_id)

    monkeypatch.setattr(chat_feed, "thread_snapshot", counted)
    release = threading.Event()
    fake_model.script(lambda req: FakeResponse.block(release, then=FakeResponse.text("first"), timeout=60)
                      if req.last_user_text == "turn 0" else None)
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        async with sse(http, f"/api/threads/{thread_id}/events") as reader:
            await reader.wait_for(lambda evs: any(e.event == "status" for e in evs))
            turn_ids = [(await http.post(f"/api/threads/{thread_id}/turns", json={"text": f"turn {n}"})).json()[
                "turn_id"] for n in range(10)]
            await reader.wait_for(lambda evs: any(e.event == "status" and e.data["queued_turn_ids"] == turn_ids[1:]
                                                  for e in evs))
            release.set()
            await reader.wait_for(ended(turn_ids[-1]), timeout=60)
            await reader.wait_for(lambda evs: [e.data for e in evs if e.event == "status"][-1]["status"] == "idle")
    last = [e.data for e in reader.events if e.event == "status"][-1]
    assert last["running_turn_id"] is None and last["queued_turn_ids"] == []
    assert any(e.event == "status" and e.data["running_turn_id"] == turn_ids[0] for e in reader.events)
    assert queries <= 6, f"{queries} snapshot queries for 10 turns"  # 2 here; 11 when every turn event asked


async def test_a_turn_temporal_does_not_take_ends_failed_in_the_feed(agent_spec, fake_model: FakeOpenAI):
    """A POST while the Temporal server is down: the turn was announced (`accepted`) before its delivery, so the feed
    also ends it, failed, saying why, and the POST answers 503. Nothing reaches the model."""
    temporal = TemporalDevServer()
    await temporal.astart()
    try:
        async with chat_server(await connect(temporal.address), agent_spec) as server, server.client() as http:
            thread_id = await _new_thread(http)
            async with sse(http, f"/api/threads/{thread_id}/events") as reader:
                await reader.wait_for(lambda evs: any(e.event == "hello" for e in evs))
                await temporal.astop()
                turn_id = new_turn_id()
                posted = await http.post(f"/api/threads/{thread_id}/turns", json={"text": "hi", "turn_id": turn_id})
                assert posted.status_code == 503, posted.text
                assert posted.json()["error"]["code"] == "temporal_unavailable"
                await reader.wait_for(ended(turn_id))
            await temporal.astart()  # the agent's worker stops cleanly
        phases = [(e.data["phase"], e.data.get("status")) for e in reader.events
                  if e.event == "turn" and e.data["turn_id"] == turn_id]
        assert phases == [("accepted", None), ("ended", "failed")]
        end = next(e for e in reader.events if e.event == "turn" and e.data["phase"] == "ended")
        assert end.data["error"].startswith("the turn could not be delivered: ")
        assert fake_model.count() == 0
    finally:
        temporal.close()


async def test_a_token_is_required_on_every_api_request(temporal_client: Client, agent_spec):
    async with chat_server(temporal_client, agent_spec, token="s3cret") as server:
        async with httpx.AsyncClient(base_url=server.url) as anonymous:
            for method, path in [("GET", "/api/threads"), ("POST", "/api/threads"), ("GET", "/api/config"),
                                 ("GET", "/v1/models"), ("POST", "/v1/chat/completions")]:
                response = await anonymous.request(method, path)
                assert response.status_code == 401, (method, path)
            wrong = await anonymous.get("/api/threads", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
            page = await anonymous.get("/")
            assert page.status_code == 200 and "<html" in page.text  # the page asks for the token itself
        async with server.client() as http:
            assert (await http.get("/api/threads")).status_code == 200
            assert (await http.get("/api/config")).json()["auth"] is True


def test_binding_beyond_loopback_needs_a_token():
    check_settings(HttpSettings(host="127.0.0.1"))
    check_settings(HttpSettings(host="::1"))
    check_settings(HttpSettings(host="0.0.0.0", token="t"))
    with pytest.raises(HttpConfigError, match="--http-token"):
        check_settings(HttpSettings(host="0.0.0.0"))
    result = run_cli("process", "join", "--room", "r", "--agent-name", "a", "--model", "offline", "--channel", "chat",
                     "--http-host", "0.0.0.0", "--temporal-address", "127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert "needs a bearer token" in result.stderr and "--http-token" in result.stderr
    assert "Traceback" not in result.stderr


async def test_openai_client_stream_and_not(temporal_client: Client, agent_spec, fake_model: FakeOpenAI):
    async with chat_server(temporal_client, agent_spec, token="tok") as server:
        client = server.openai_client("tok")
        models = await client.models.list()
        assert [m.id for m in models.data] == ["support"]

        raw = await client.chat.completions.with_raw_response.create(
            model="support", messages=[{"role": "user", "content": "first"}])
        thread_id = raw.headers["x-thread-id"]
        completion = raw.parse()
        assert completion.choices[0].message.content == "echo: first"

        words = " ".join(f"w{n}" for n in range(40))
        fake_model.enqueue(FakeResponse.text(words, chunk_delay=0.01))
        stream = await client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "second"}], stream=True,
            stream_options={"include_usage": True}, extra_headers={"X-Thread-Id": thread_id})
        pieces, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert "".join(pieces) == words and finish == "stop" and usage is not None
        assert len([p for p in pieces if p]) < 40, "deltas are coalesced, not one chunk per token"

        async with server.client() as http:
            items = (await http.get(f"/api/threads/{thread_id}/items")).json()["items"]
        assert [i["text"] for i in items if i["type"] == "user"] == ["first", "second"]

        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.AuthenticationError):
            await server.openai_client("bad").models.list()


async def test_the_threading_mode_none_uses_the_main_thread(temporal_client: Client, agent_spec):
    spec = agent_spec.model_copy(update={"threading_mode": "none"})
    async with chat_server(temporal_client, spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        assert thread_id == f"{spec.room}/.threads/support/main"
        assert await _new_thread(http) == thread_id
        await asyncio.sleep(0)


async def test_large_content_is_refused_with_413_and_nothing_runs(temporal_client: Client, agent_spec,
                                                                  fake_model: FakeOpenAI):
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        big = "x" * (MAX_TURN_TEXT_BYTES + 1)
        turn = await http.post(f"/api/threads/{thread_id}/turns", json={"text": big})
        assert turn.status_code == 413, turn.text
        message = turn.json()["error"]["message"]
        assert f"{MAX_TURN_TEXT_BYTES + 1:,} bytes, over the {MAX_TURN_TEXT_BYTES:,} byte limit" in message
        assert "room storage" in message

        steer = await http.post(f"/api/threads/{thread_id}/steer", json={"text": big})
        assert steer.status_code == 413 and "the steer text is" in steer.json()["error"]["message"], steer.text

        huge = await http.post(f"/api/threads/{thread_id}/turns", content=b'{"text": "' + b"y" * (3 << 20) + b'"}',
                               headers={"Content-Type": "application/json"})
        assert huge.status_code == 413 and "request body is over the" in huge.json()["error"]["message"]

        async def chunks():  # noqa: ANN202 - no Content-Length: counted while read
            yield b'{"text": "'
            for _ in range(8):
                yield b"z" * (512 << 10)
            yield b'"}'

        chunked = await http.post(f"/api/threads/{thread_id}/turns", content=chunks(),
                                  headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413, chunked.text

        openai_client = server.openai_client("unused")
        with pytest.raises(openai.APIStatusError) as refused:
            await openai_client.chat.completions.create(model="support", messages=[{"role": "user", "content": big}])
        assert refused.value.status_code == 413

        items = (await http.get(f"/api/threads/{thread_id}/items")).json()["items"]
        assert items == [] and fake_model.count() == 0


async def test_without_a_token_cross_site_and_rebinding_requests_are_refused(temporal_client: Client, agent_spec,
                                                                             fake_model: FakeOpenAI):
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        # A cross-site "simple" request: a form or text/plain POST, as any web page can make the browser send.
        plain = await http.post(f"/api/threads/{thread_id}/turns", content=b'{"text": "hi"}',
                                headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415 and "application/json" in plain.json()["error"]["message"]
        form = await http.post("/api/threads", data={"a": "b"})
        assert form.status_code == 415
        other_page = await http.post(f"/api/threads/{thread_id}/turns", json={"text": "hi"},
                                     headers={"Origin": "https://evil.example"})
        assert other_page.status_code == 403 and "evil.example" in other_page.json()["error"]["message"]
        # DNS rebinding: the attacker's name resolves to 127.0.0.1, so the Host header is theirs.
        rebound = await http.get("/api/threads", headers={"Host": "evil.example:8780"})
        assert rebound.status_code == 403
        assert (await http.get(f"/api/threads/{thread_id}/items", headers={"Host": "rebind.example"})).status_code == 403

        # This server's own page still works: same origin, JSON bodies.
        own = await http.post(f"/api/threads/{thread_id}/turns?wait=true", json={"text": "hello"},
                              headers={"Origin": server.url})
        assert own.status_code == 200 and own.json()["reply"]["text"] == "echo: hello"
        assert (await http.get("/api/threads", headers={"Host": "localhost:1234"})).status_code == 200
        items = (await http.get(f"/api/threads/{thread_id}/items")).json()["items"]
        assert [i["text"] for i in items] == ["hello", "echo: hello"] and fake_model.count() == 1


async def test_event_streams_are_capped(temporal_client: Client, agent_spec, monkeypatch):
    monkeypatch.setattr(threads_api, "MAX_EVENT_STREAMS", 2)
    async with chat_server(temporal_client, agent_spec) as server, server.client() as http:
        thread_id = await _new_thread(http)
        path = f"/api/threads/{thread_id}/events"
        async with sse(http, path) as first, sse(http, path):
            await first.wait_for(lambda evs: any(e.event == "hello" for e in evs))
            refused = await http.get(path)
            assert refused.status_code == 503 and "2 event streams" in refused.json()["error"]["message"]

        async def reopened() -> bool:
            async with http.stream("GET", path) as response:
                return response.status_code == 200
        await eventually(reopened, 10, what="a stream slot freed once a client left")
