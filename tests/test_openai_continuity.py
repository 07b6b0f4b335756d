"""Standard OpenAI-compatible clients keep their conversation without any custom header: the official `openai`
client sending the whole `messages` list each time, as every chat UI does. The conversation so far leads to its
thread; an edited or regenerated message forks a new thread with the shared history; another caller's identical
history is another thread."""

from __future__ import annotations

import openai
from temporalio.client import Client
from threadline.activities.thread_store import ThreadStore

from tests.chat_http_support import chat_server
from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse
from tests.runtime_support import store_items


def _conversation(request: FakeRequest) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in request.messages if m["role"] != "system"]


async def _ask(client: openai.AsyncOpenAI, messages: list[dict[str, str]], **extra: object) -> tuple[str, str]:
    raw = await client.chat.completions.with_raw_response.create(model="support", messages=messages, **extra)
    return raw.parse().choices[0].message.content or "", raw.headers["x-thread-id"]


async def test_a_stateless_client_keeps_one_thread_and_forks_on_an_edit(temporal_client: Client, agent_spec,
                                                                       fake_model: FakeOpenAI):
    async with chat_server(temporal_client, agent_spec, token="tok") as server:
        client = server.openai_client("tok")
        messages = [{"role": "system", "content": "Answer as a pirate."}, {"role": "user", "content": "first"}]
        answer, thread = await _ask(client, messages)
        assert answer == "echo: first"
        for text in ("second", "third"):
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": text}]
            answer, same = await _ask(client, messages)
            assert same == thread and answer == f"echo: {text}"
        assert _conversation(fake_model.requests[-1]) == [
            ("user", "first"), ("assistant", "echo: first"), ("user", "second"), ("assistant", "echo: second"),
            ("user", "third")]
        # The client's system message is the turn's instructions, below the agent's own rules.
        assert fake_model.requests[-1].messages[0]["content"].endswith("Answer as a pirate.")

        # Regenerating the last answer: the same history again; the thread has gone on, so it is a fork.
        fake_model.enqueue(FakeResponse.text("another third"))
        regenerated, fork = await _ask(client, messages)
        assert fork != thread and regenerated == "another third"
        assert _conversation(fake_model.requests[-1]) == [
            ("user", "first"), ("assistant", "echo: first"), ("user", "second"), ("assistant", "echo: second"),
            ("user", "third")]
        forked = store_items(agent_spec.room, fork)
        assert [(i.type, i.text, i.data.get("imported", False)) for i in forked] == [
            ("user", "first", True), ("assistant", "echo: first", True), ("user", "second", True),
            ("assistant", "echo: second", True), ("user", "third", False), ("assistant", "another third", False)]

        # Editing an earlier message: a new thread with the shared part, never a mix with the first thread.
        edited = [messages[0], {"role": "user", "content": "first, edited"},
                  {"role": "assistant", "content": "echo: first"}, {"role": "user", "content": "and then"}]
        _, other = await _ask(client, edited)
        assert other not in (thread, fork)
        assert "third" not in str(fake_model.requests[-1].messages)
        # Each branch goes on in its own thread: the client's history says which.
        original = [*messages, {"role": "assistant", "content": "echo: third"}, {"role": "user", "content": "fourth"}]
        assert (await _ask(client, original))[1] == thread
        chosen = [*messages, {"role": "assistant", "content": "another third"}, {"role": "user", "content": "4th"}]
        assert (await _ask(client, chosen))[1] == fork
        assert [i.text for i in store_items(agent_spec.room, thread) if i.type == "user"] == [
            "first", "second", "third", "fourth"]
        assert [i.text for i in store_items(agent_spec.room, fork) if i.type == "user"][-2:] == ["third", "4th"]


async def test_identical_histories_of_other_callers_are_other_threads(temporal_client: Client, agent_spec,
                                                                      fake_model: FakeOpenAI):
    async with chat_server(temporal_client, agent_spec) as server:
        client = server.openai_client("unused")
        history = [{"role": "user", "content": "hi"}]
        _, ann = await _ask(client, history, user="ann")
        _, bob = await _ask(client, history, user="bob")
        assert ann != bob
        follow_up = [*history, {"role": "assistant", "content": "echo: hi"}, {"role": "user", "content": "again"}]
        assert (await _ask(client, follow_up, user="ann"))[1] == ann
        assert (await _ask(client, follow_up, user="bob"))[1] == bob
        # A conversation id continues its thread whatever the messages say.
        _, first = await _ask(client, [{"role": "user", "content": "one"}], metadata={"conversation_id": "c-7"})
        _, second = await _ask(client, [{"role": "user", "content": "two"}], metadata={"conversation_id": "c-7"})
        assert first == second
        assert [i.text for i in ThreadStore.for_room(agent_spec.room).items(first) if i.type == "user"] == [
            "one", "two"]


async def test_the_openai_agents_sdk_talks_to_the_agent_as_a_model(temporal_client: Client, agent_spec,
                                                                   fake_model: FakeOpenAI):
    from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    async with chat_server(temporal_client, agent_spec, token="tok") as server:
        client = server.openai_client("tok")
        caller = Agent(name="caller", instructions="Be brief.",
                       model=OpenAIChatCompletionsModel(model="support", openai_client=client))
        history = [{"role": "user", "content": "my name is Ann"}, {"role": "assistant", "content": "hello Ann"},
                   {"role": "user", "content": "what is my name?"}]
        result = await Runner.run(caller, history)
        assert result.final_output == "echo: what is my name?"
        assert _conversation(fake_model.requests[-1]) == [(m["role"], m["content"]) for m in history]
        streamed = Runner.run_streamed(caller, [*result.to_input_list(), {"role": "user", "content": "again"}])
        deltas = [e.data.delta async for e in streamed.stream_events()
                  if e.type == "raw_response_event" and getattr(e.data, "type", "") == "response.output_text.delta"]
        assert "".join(deltas) == "echo: again" == streamed.final_output
        # The second run's history continued the first run's thread.
        thread_ids = {i.thread_id for i in ThreadStore.for_room(agent_spec.room).threads()}
        assert len(thread_ids) == 1
