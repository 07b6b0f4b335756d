"""Long threads against a model with a small context window: the oldest part of a thread becomes a summary item
before the prompt outgrows the model, the model always sees the rules, the latest summary and the newest turns,
and nothing is lost from the thread store. The fake model enforces its window by its own token count (characters
/ 3, denser than Threadline's estimate of characters / 4) and answers `400 context_length_exceeded` past it."""

from __future__ import annotations

import asyncio
import re

from temporalio.client import Client
from threadline.activities.compaction import KEPT_ITEMS
from threadline.activities.context_window import SUMMARY_INSTRUCTIONS, ContextBudget
from threadline.activities.prompt import HISTORY_WINDOW
from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn, thread_snapshot
from threadline.models.spec import AgentSpec, ContextSettings
from threadline.models.thread import PriorMessage, Turn

from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse
from tests.runtime_support import Gate, record_history, store_items

RULE = "You are the support agent of ACME."
SUMMARY_MARK = SUMMARY_INSTRUCTIONS.split(",")[0]
FACT = re.compile(r"FACT: [^.\n]*")
FILLER = ("The customer describes the weather, the delivery van, the neighbour's dog and the colour of the parcel "
          "in great detail, none of which matters to the case. ")


def _is_summary_request(request: FakeRequest) -> bool:
    return (request.messages[0].get("content") or "").startswith(SUMMARY_MARK)


def summarising_model(request: FakeRequest) -> FakeResponse | None:
    """Summaries keep the FACT sentences of what they are given; a question about the order number is answered
    from whatever the prompt says; the rest is the fake's default (echo, CALL_TOOL)."""
    if _is_summary_request(request):
        text = request.messages[-1]["content"]
        facts = list(dict.fromkeys(FACT.findall(text)))
        return FakeResponse.text("Earlier: " + (". ".join(facts) + "." if facts else "small talk only."))
    if "what is my order number" in request.last_user_text:
        prompt = " ".join(m.get("content") or "" for m in request.messages)
        found = re.search(r"order number is ([\w-]+)", prompt)
        return FakeResponse.text(f"your order number is {found.group(1) if found else 'unknown'}")
    return None


def _check_pairs(request: FakeRequest) -> None:
    """No tool result without the call it answers, earlier in the same prompt."""
    called: set[str] = set()
    for message in request.messages:
        called |= {c["id"] for c in message.get("tool_calls") or []}
        if message["role"] == "tool":
            assert message["tool_call_id"] in called, f"a tool result without its call in request {request.index}"


def _small_model_spec(room: str, window: int, **context: object) -> AgentSpec:
    return AgentSpec(room=room, agent_name="support", model="fake-model", rules=[RULE],
                     tools=["tests.tools_for_tests:big_output"],
                     context=ContextSettings(window=window, **context))


async def test_a_300_turn_thread_with_tools_stays_within_a_4000_token_window(
        temporal_client: Client, room: str, agent_worker, fake_model: FakeOpenAI):
    spec = _small_model_spec(room, 4000)
    budget = ContextBudget.of("fake-model", spec.context, None)
    fake_model.context_window, fake_model.chars_per_token = 4000, 3
    fake_model.script(summarising_model)
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    turns = 300
    for n in range(1, turns + 1):
        if n == 3:
            text = "FACT: my order number is 77-AX. " + FILLER
        elif n == 250:
            text = "what is my order number?"
        elif n % 7 == 0:
            text = f"look it up {n}\nCALL_TOOL big_output {{\"size\": 3000}}"
        else:
            text = f"message {n}. " + FILLER
        reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=f"t{n}", text=text))
        assert reply.status == "completed", (n, reply.error)
        if n == 250:
            assert reply.text == "your order number is 77-AX"

    requests = fake_model.requests
    summaries = [r for r in requests if _is_summary_request(r)]
    answers = [r for r in requests if not _is_summary_request(r)]
    assert [r.status for r in requests if r.status != 200] == []  # not one context_length_exceeded
    for request in answers:
        assert request.messages[0]["role"] == "system" and request.messages[0]["content"].startswith(RULE)
        assert fake_model.prompt_tokens(request) <= 4000
        _check_pairs(request)
    # Every turn's own message reaches the model verbatim, in the turn's first request.
    firsts = {r.last_user_text for r in answers}
    assert all(t in firsts for t in ("message 299. " + FILLER, "what is my order number?"))

    items = store_items(room, thread_id)
    summary_items = [i for i in items if i.type == "summary"]
    assert len(summaries) == sum(i.data["usage"]["model_calls"] for i in summary_items) >= len(summary_items) > 0
    for item in summary_items:
        assert item.data["tokens_before"] > budget.threshold, item.data
        assert item.data["tokens_after"] <= budget.threshold, item.data
    # Each compaction follows from the token arithmetic: the thread grew by at least what one compaction frees.
    grown = sum(fake_model.prompt_tokens(r) for r in answers if r.messages[-1]["role"] == "user")
    assert len(summary_items) <= grown // (budget.threshold - budget.keep - budget.summary) + 1
    # After the first compaction every prompt carries the latest summary; turn 3's fact survives only there.
    first_summary = requests.index(summaries[0])
    for request in answers[first_summary:]:
        assert "Summary of the earlier part of this conversation" in request.messages[0]["content"]
    question = next(r for r in answers if r.last_user_text == "what is my order number?")
    assert "77-AX" in question.messages[0]["content"]
    assert all("77-AX" not in (m.get("content") or "") for m in question.messages[1:])
    # Nothing is deleted: every user message of the 300 turns is in the store.
    assert len([i for i in items if i.type == "user"]) == turns
    info = ThreadStore.for_room(room).thread(thread_id)
    assert info is not None and info.usage.model_calls == len(requests)


async def test_a_thread_of_short_messages_past_the_item_window_compacts_once_not_at_every_turn(
        temporal_client: Client, room: str, agent_worker, fake_model: FakeOpenAI):
    """Short messages fill the item window long before the token budget: one compaction makes room for the next
    KEPT_ITEMS items, instead of summarising the two that fell out of the window at each turn."""
    spec = AgentSpec(room=room, agent_name="support", model="fake-model", rules=[RULE])
    fake_model.script(summarising_model)
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    prior = [PriorMessage(role="user" if n % 2 == 0 else "assistant", text=f"short {n}")
             for n in range(HISTORY_WINDOW + 20)]
    first = await submit_turn(temporal_client, spec.ref, thread_id,
                              Turn(turn_id=new_turn_id(), text="FACT: the parcel is blue.", prior=prior))
    assert first.status == "completed", first.error
    for n in range(20):
        reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=f"next {n}"))
        assert reply.status == "completed", reply.error

    summaries = [r for r in fake_model.requests if _is_summary_request(r)]
    answers = [r for r in fake_model.requests if not _is_summary_request(r)]
    assert len(summaries) == 1 and len(answers) == 21
    summary = next(i for i in store_items(room, thread_id) if i.type == "summary")
    assert HISTORY_WINDOW + 21 - summary.data["last_seq"] <= KEPT_ITEMS
    last = answers[-1]
    assert "Summary of the earlier part of this conversation" in last.messages[0]["content"]
    assert len(last.messages) <= 1 + KEPT_ITEMS + 2 * 20 + 1
    assert last.last_user_text == "next 19"


async def test_context_length_exceeded_compacts_once_and_asks_again(
        temporal_client: Client, room: str, agent_worker, fake_model: FakeOpenAI):
    """A server whose window is smaller than configured (32,768 tokens assumed for an unknown model): its 400 gives
    one compaction and one more try, not a dead thread."""
    spec = AgentSpec(room=room, agent_name="support", model="fake-model", rules=[RULE])
    fake_model.context_window, fake_model.chars_per_token = 1500, 3
    fake_model.script(summarising_model)
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    big = "FACT: the parcel is blue. " + FILLER * 12
    first = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=big))
    second = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="more " + big))
    assert first.status == second.status == "completed"
    assert [r.status for r in fake_model.requests] == [200, 400, 200, 200]
    assert _is_summary_request(fake_model.requests[2])
    assert [i.type for i in store_items(room, thread_id)] == ["user", "assistant", "user", "summary", "assistant"]
    assert "the parcel is blue" in fake_model.requests[3].messages[0]["content"]
    await record_history(temporal_client.get_workflow_handle(thread_id), "compaction")


async def test_without_context_management_a_thread_past_the_window_fails_saying_so(
        temporal_client: Client, room: str, agent_worker, fake_model: FakeOpenAI):
    spec = AgentSpec(room=room, agent_name="support", model="fake-model", context=ContextSettings(management="none"))
    fake_model.context_window, fake_model.chars_per_token = 1500, 3
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    big = FILLER * 12
    await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=big))
    failed = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=big))
    assert failed.status == "failed"
    assert "no longer fits the context window of model fake-model" in (failed.error or "")
    assert "--context-management auto" in (failed.error or "")
    assert [r.status for r in fake_model.requests] == [200, 400]  # refused once, not retried
    assert not [i for i in store_items(room, thread_id) if i.type == "summary"]


async def test_a_worker_killed_during_a_compaction_leaves_one_summary(
        temporal_client: Client, room: str, agent_process, fake_model: FakeOpenAI):
    spec = _small_model_spec(room, 2000, threshold=600)
    fake_model.context_window, fake_model.chars_per_token = 2000, 3
    gate = Gate()
    summary_attempts = 0

    def model(request: FakeRequest) -> FakeResponse | None:
        nonlocal summary_attempts
        answer = summarising_model(request)
        if _is_summary_request(request):
            summary_attempts += 1
            return gate.response(answer) if summary_attempts == 1 else answer
        return answer

    fake_model.script(model)
    first_process = agent_process(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    text = "FACT: the refund is 40 EUR. " + FILLER * 5
    first = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id="t1", text=text))
    assert first.status == "completed"
    second = asyncio.create_task(submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id="t2", text=text)))
    await fake_model.wait_for_async(lambda: summary_attempts == 1 and fake_model.in_flight == 1, timeout=30)
    first_process.kill()
    gate.release()  # the dead worker's summary is answered into a closed connection
    agent_process(spec)
    reply = await asyncio.wait_for(second, 90)
    assert reply.status == "completed" and reply.text.startswith("echo: FACT: the refund")
    items = store_items(room, thread_id)
    summaries = [i for i in items if i.type == "summary"]
    assert len(summaries) == 1 and summary_attempts == 2
    assert (summaries[0].data["first_seq"], summaries[0].data["last_seq"]) == (1, 2)
    assert [i.type for i in items if i.turn_id == "t2"] == ["user", "summary", "assistant"]
    last = fake_model.requests[-1]
    assert "the refund is 40 EUR" in last.messages[0]["content"] and len(last.messages) == 2
    snap = await thread_snapshot(temporal_client, thread_id)
    assert snap.turns_completed == 2


async def test_output_limit_and_reasoning_effort_reach_the_model(
        temporal_client: Client, room: str, agent_worker, fake_model: FakeOpenAI):
    spec = AgentSpec(room=room, agent_name="support", model="fake-model", max_output_tokens=500,
                     reasoning_effort="low")
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="hi"))
    body = fake_model.requests[-1].json
    assert (body["max_tokens"], body["reasoning_effort"]) == (500, "low")
